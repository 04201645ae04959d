"""fusedlr.AdamWScheduleFree: schedulefree.AdamWScheduleFree's update on fusedlr's fused step.

The package keeps ``k``, ``lr_max`` and ``weight_sum`` per group as host floats; here they live
on the device (``_group_sums``, float64 ``[4, G]``: lr_max, weight_sum, then the last update's
ckp1 and warmed-up lr), advanced by the finalize launch: no host synchronisation in ``step()``.
``k`` is the schedule counter (every group advances at every step, as in the package). State
dicts carry the package's group keys (``k``, ``lr_max``, ``weight_sum``, ``scheduled_lr``,
``train_mode``, ``foreach``) so that they load across the two in both directions.
"""

from __future__ import annotations

from numbers import Integral

import torch

from . import _precision, reference
from .optim import _called_to_make_states, _check_group_hypers, _check_real, _FusedOptimizer, _kind_arguments

# Group keys of schedulefree's state dicts that fusedlr keeps on the device (or, "foreach", has no use for).
_PACKAGE_GROUP_KEYS = ("k", "lr_max", "weight_sum", "scheduled_lr", "foreach")


def _check_schedulefree_hypers(group: dict) -> None:
    _check_group_hypers(group)
    for key in ("warmup_steps", "r", "weight_lr_power", "train_mode"):
        if key not in group:
            raise KeyError(f"fusedlr: a param group lacks the key {key!r}")
    warmup = group["warmup_steps"]
    whole = isinstance(warmup, Integral) or (isinstance(warmup, float) and warmup.is_integer())  # 5.0, as the package
    if not whole or isinstance(warmup, bool) or warmup < 0:
        raise ValueError(f"Invalid warmup_steps: {warmup!r} (a non-negative whole number)")
    _check_real("r", group["r"], low=0.0)
    _check_real("weight_lr_power", group["weight_lr_power"], low=0.0)


class AdamWScheduleFree(_FusedOptimizer):
    """Schedule-Free AdamW (Defazio et al. 2024) as ``schedulefree.AdamWScheduleFree``, with
    fusedlr's fused global-norm/AGC/value clipping and bf16 options.

    As in the package: the params hold y in train mode and x in eval mode; call ``train()``
    before training steps and ``eval()`` before evaluating or saving (the optimizer starts in eval
    mode, and ``step()`` in eval mode raises). Warmup is built in (``warmup_steps``); a fusedlr
    ``schedule``, when given, multiplies the lr as well (the default None is the package's
    behaviour). Every backend (``torch``, ``cpu``, ``triton``, ``cuda``).
    """

    _kind = "schedulefree"
    _state_names = ("z", "exp_avg_sq")
    _required_state = ("z", "exp_avg_sq")
    _check_group_hypers = staticmethod(_check_schedulefree_hypers)

    def __init__(
        self,
        params,
        lr: float = 0.0025,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        *,
        maximize: bool = False,
        schedule=None,
        max_grad_norm: float | None = None,
        clip_value: float | None = None,
        agc_clip_factor: float | None = None,
        agc_eps: float = 1e-3,
        skip_nonfinite: bool = False,
        master_weights: bool = False,
        stochastic_rounding: bool = False,
        state_dtype: torch.dtype | None = None,
        seed: int = 0,
        grad_attribute: str = "grad",
        norm_group=None,
        backend: str = "auto",
    ):
        rule = dict(
            lr=lr,
            betas=tuple(betas) if isinstance(betas, list) else betas,
            eps=eps,
            weight_decay=weight_decay,
            warmup_steps=warmup_steps,
            r=r,
            weight_lr_power=weight_lr_power,
            train_mode=False,
        )
        defaults, options = _kind_arguments(rule, locals())
        super().__init__(params, defaults, **options)
        self._group_sums = self._fresh_sums(len(self.param_groups), self._schedule_step.device)

    @staticmethod
    def _fresh_sums(count: int, device) -> torch.Tensor:
        sums = torch.zeros(4, count, dtype=torch.float64, device=device)
        sums[0] = -1.0  # the package's initial lr_max
        return sums

    def add_param_group(self, param_group: dict) -> None:
        if "train_mode" not in param_group and self.param_groups:
            # A new group has no state yet, so its params are both y and x: it joins in the
            # optimizer's mode (the package checks the first group's mode only).
            param_group = dict(param_group, train_mode=self.param_groups[0]["train_mode"])
        super().add_param_group(param_group)
        sums = self.__dict__.get("_group_sums")
        if sums is not None:  # (not yet while the base __init__ adds the first groups)
            self._group_sums = torch.cat([sums, self._fresh_sums(1, sums.device)], dim=1)

    def _init_state(self, param: torch.Tensor, group: dict) -> dict:
        state = self.state[param]
        dtype = _precision.state_dtype(param, group)
        if not state:  # as the package: z starts at the params, the second moment at zero
            source = param.detach()
            state["z"] = torch.clone(source, memory_format=torch.preserve_format).to(dtype)
            state["exp_avg_sq"] = torch.zeros_like(param, dtype=dtype, memory_format=torch.preserve_format)
        state = super()._init_state(param, group)  # the fp32 master copy; exp_avg_sq's dtype
        if state["z"].dtype != dtype:
            state["z"] = state["z"].to(dtype)
        return state

    # ----- train / eval: which point the params hold ------------------------------------------
    @torch.no_grad()
    def _move_params(self, to_train: bool) -> None:
        for group in self.param_groups:
            if bool(group["train_mode"]) == to_train:
                continue
            beta1 = float(group["betas"][0])
            weight = 1 - beta1 if to_train else 1 - 1 / beta1  # x -> y, or y -> x
            for param in group["params"]:
                state = self.state.get(param)
                if not state or "z" not in state:
                    continue
                master = state.get("master_param")
                target = param if master is None else master
                target.lerp_(state["z"].to(device=target.device, dtype=target.dtype), weight)
                if master is not None:
                    param.copy_(master)
            group["train_mode"] = to_train

    def train(self) -> None:
        """Put y (the point the grads are taken at) into the params, as the package's ``train()``."""
        self._move_params(True)

    def eval(self) -> None:
        """Put x (the averaged point, to evaluate and save) into the params, as the package's ``eval()``."""
        self._move_params(False)

    # ----- the step ---------------------------------------------------------------------------
    def step(self, closure=None):
        # torch.distributed.checkpoint steps a loading optimizer only to make its states (no
        # update, see optim._called_to_make_states): allowed in eval mode, where checkpoints load.
        making_states = closure is None and not torch.compiler.is_compiling() and _called_to_make_states()
        if not making_states and not all(group["train_mode"] for group in self.param_groups):
            raise RuntimeError(
                "Optimizer was not in train mode when step is called. Call optimizer.train() before training "
                "steps and optimizer.eval() before evaluation (as schedulefree.AdamWScheduleFree requires)."
            )
        return super().step(closure)

    def _eager_step(self) -> None:
        params = self.param_groups[0]["params"]
        if params and self._group_sums.device != params[0].device:  # the model moved after construction
            self._group_sums = self._group_sums.to(params[0].device)
        super()._eager_step()

    def _reference_options(self) -> dict:
        def group_scalars(group_lr):
            return reference.schedulefree_scalars(self.param_groups, self._group_sums, self._host_step, group_lr)

        return {"group_scalars": group_scalars}

    # ----- applied lr ------------------------------------------------------------------------
    def current_lr(self) -> list[torch.Tensor]:
        """Per group, the lr of the last update applied, warmup included (the package's
        ``scheduled_lr``); before the first update, the first one's. Device tensors, no sync."""
        return self._with_warmup(super().current_lr(), upcoming=False)

    def next_lr(self) -> list[torch.Tensor]:
        """Per group, the lr the next update will apply, warmup included."""
        return self._with_warmup(super().next_lr(), upcoming=True)

    def _with_warmup(self, lrs, *, upcoming: bool) -> list[torch.Tensor]:
        counter = self._schedule_step
        k = (counter if upcoming else torch.clamp(counter - 1, min=0)).to(torch.float64)
        out = []
        for lr, group in zip(lrs, self.param_groups):
            warmup = group["warmup_steps"]
            out.append(lr * torch.where(k < warmup, (k + 1) / warmup, 1.0) if warmup else lr)
        return out

    # ----- state dict -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state_dict = super().state_dict()
        lr_max, weight_sum, _, scheduled_lr = self._group_sums.tolist()
        counter = int(self._schedule_step.item())
        state_dict["param_groups"] = [
            dict(
                group, k=counter, lr_max=lr_max[i], weight_sum=weight_sum[i], scheduled_lr=scheduled_lr[i], foreach=True
            )  # fmt: skip
            for i, group in enumerate(state_dict["param_groups"])
        ]
        return state_dict

    def load_state_dict(self, state_dict: dict) -> None:
        before = self._group_sums
        try:
            super().load_state_dict(state_dict)
        except BaseException:
            self._group_sums = before
            raise

    def _load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        groups = [dict(group) for group in state_dict["param_groups"]]
        sums = self._fresh_sums(len(groups), self._schedule_step.device)
        for i, group in enumerate(groups):
            values = {key: group.pop(key) for key in _PACKAGE_GROUP_KEYS if key in group}
            if "lr_max" in values:
                sums[0, i] = float(values["lr_max"])
            if "weight_sum" in values:
                sums[1, i] = float(values["weight_sum"])
            if "scheduled_lr" in values:
                sums[3, i] = float(values["scheduled_lr"])
            if "k" in values and "schedule_step" not in state_dict:
                # The package's counter is the schedule's. fusedlr writes it beside its own in
                # every group; the package keeps unknown keys, so after a round trip through the
                # package only ``k`` is current.
                group["schedule_step"] = int(values["k"])
        state_dict["param_groups"] = groups
        super()._load_state_dict(state_dict)
        self._group_sums = sums
