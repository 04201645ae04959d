"""The user-facing optimizers: validation, param groups, state and state_dict. No math here.

The math lives in ``reference.py`` (backend ``torch``) and ``_triton/`` (backend ``triton``);
this file decides which runs, checks every input before either touches anything, and keeps
the state in the layout ``torch.optim.AdamW`` uses so that state dicts travel both ways.
"""

from __future__ import annotations

import functools
import math
from numbers import Real

import torch

from . import (
    _backends,
    _compile,
    _cpu,
    _distributed,
    _fused,
    _precision,
    _quantized,
    _split_master,
    reference,
)
from ._applied_lr import AppliedLRMethods
from ._checkpoint import StateDictMethods
from ._copying import CopyMethods
from ._host_path import CachedChecks
from ._sharded import ShardedSteps, _called_to_make_states
from ._state import StateTable as _StateTable
from ._step_inputs import StepInputs
from .lr_scheduler import warn_if_torch_scheduler_attached
from .schedules import Schedule, check_schedule


def _check_real(name: str, value, *, low: float, low_inclusive: bool = True, high: float | None = None,
                tensor_name: str | None = None):  # fmt: skip
    if isinstance(value, torch.Tensor):
        if tensor_name is None:
            raise ValueError(
                f"Invalid {name}: {value!r} (expected a Python number; of the hyperparameters only lr and betas "
                "may be tensors)"
            )
        # As torch: a tensor lr (or beta) is read on the device at every step, so that a new value
        # needs no recompile or graph capture. The value is checked here, once (a host read).
        if value.numel() != 1 or not value.is_floating_point():
            raise ValueError(f"Tensor {tensor_name} must be a 1-element floating-point tensor; got {value!r}")
        if value.device.type == "meta":
            return
        value = float(value)
    ok = isinstance(value, Real) and not isinstance(value, bool) and not math.isnan(value)
    if ok:
        ok = value >= low if low_inclusive else value > low
    if ok and high is not None:
        ok = value < high
    if not ok:
        raise ValueError(f"Invalid {name}: {value if isinstance(value, Real) else repr(value)}")


def _check_clip_options(max_grad_norm, clip_value) -> None:
    """ValueErrors for the clipping thresholds (at construction, and at each step: they are
    plain attributes a user may assign between steps)."""
    if max_grad_norm is not None:
        _check_real("max_grad_norm", max_grad_norm, low=0.0, low_inclusive=False)
    if clip_value is not None:
        _check_real("clip_value", clip_value, low=0.0, low_inclusive=False)


def _check_group_hypers(group: dict) -> None:
    for key in ("lr", "betas", "weight_decay", "agc_clip_factor", "agc_eps"):
        if key not in group:
            raise KeyError(f"fusedlr: a param group lacks the key {key!r}")
    _check_real("learning rate", group["lr"], low=0.0, tensor_name="lr")
    if "eps" in group:
        _check_real("epsilon value", group["eps"], low=0.0)
    betas = group["betas"]
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise ValueError(f"Invalid betas: {betas!r} (expected a pair of floats)")
    for i, beta in enumerate(betas):
        if isinstance(beta, torch.Tensor):
            _check_real(f"beta parameter at index {i}", beta, low=0.0, high=1.0, tensor_name=f"betas[{i}]")
        elif not (isinstance(beta, Real) and not isinstance(beta, bool) and 0.0 <= beta < 1.0):
            raise ValueError(f"Invalid beta parameter at index {i}: {beta}")
    _check_real("weight_decay value", group["weight_decay"], low=0.0)
    factor = group["agc_clip_factor"]
    if factor is not None:
        _check_real("agc_clip_factor", factor, low=0.0, low_inclusive=False)
    _check_real("agc_eps", group["agc_eps"], low=0.0, low_inclusive=False)


# The keywords every optimizer kind takes beside its rule's hyperparameters: options copied into
# each param group's defaults, and options of the whole optimizer.
_GROUP_OPTIONS = (
    "maximize",
    "agc_clip_factor",
    "agc_eps",
    "master_weights",
    "stochastic_rounding",
    "state_dtype",
    "seed",
)
_OPTIMIZER_OPTIONS = (
    "schedule",
    "max_grad_norm",
    "skip_nonfinite",
    "backend",
    "grad_attribute",
    "clip_value",
    "norm_group",
)


def _kind_arguments(rule: dict, arguments: dict) -> tuple[dict, dict]:
    """``(group defaults, optimizer options)`` for ``_FusedOptimizer.__init__`` from a kind's rule
    hyperparameters and its constructor's ``locals()``."""
    defaults = dict(rule, **{name: arguments[name] for name in _GROUP_OPTIONS})
    defaults["maximize"] = bool(defaults["maximize"])
    defaults["master_weights"] = _precision.master_option(defaults["master_weights"])
    defaults["stochastic_rounding"] = bool(defaults["stochastic_rounding"])
    return defaults, {name: arguments[name] for name in _OPTIMIZER_OPTIONS}


class _FusedOptimizer(StepInputs, ShardedSteps, CachedChecks, StateDictMethods, CopyMethods, AppliedLRMethods,
                      torch.optim.Optimizer):  # fmt: skip
    """Shared machinery of every kind (AdamW, Lion, SGD, Schedule-Free) but its own state and checks."""

    _kind: str  # "adamw", "lion", "sgd" or "schedulefree": selects the update rule in every backend
    _kind_backends = ("torch", "cpu", "triton", "cuda")  # the backends that implement this kind's rule
    _check_group_hypers = staticmethod(_check_group_hypers)  # a kind with other hyperparameters overrides it
    # torch.amp.GradScaler hands us `grad_scale` and `found_inf` and lets us unscale and skip
    # inside the fused passes, instead of unscaling every grad in place first.
    _step_supports_amp_scaling = True

    def __init__(self, params, defaults: dict, *, schedule, max_grad_norm, skip_nonfinite, backend: str,
                 grad_attribute: str = "grad", clip_value: float | None = None, norm_group=None):  # fmt: skip
        # Params that are the same on every rank of norm_group: counted once in the norm.
        defaults.setdefault("replicated", False)
        self._check_group_hypers(defaults)
        self._check_group_options(defaults)
        check_schedule(schedule)
        if not isinstance(grad_attribute, str) or not grad_attribute.isidentifier():
            raise ValueError(f"Invalid grad_attribute: {grad_attribute!r}")
        # Where each step reads a param's gradient: "grad", or e.g. "main_grad" for the float32
        # accumulation buffers that bf16 training keeps beside each param (torch refuses an
        # fp32 .grad on a bf16 param).
        self.grad_attribute = grad_attribute
        _check_clip_options(max_grad_norm, clip_value)
        _backends.check_backend_name(backend)
        self.schedule = schedule
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        # Every grad element clamped to [-clip_value, clip_value] before AGC and the norm
        # (clip_grad_value_ then clip_grad_norm_), in registers.
        self.clip_value = None if clip_value is None else float(clip_value)
        self.backend = backend
        self.skip_nonfinite = bool(skip_nonfinite)
        # Ranks over which the norm's total is summed as well (pipeline stages, plain-tensor
        # model parallelism); see fusedlr/_distributed.py.
        self.norm_group = _distributed.resolve_norm_group(norm_group)
        self._reduction_cache = None  # (key, NormReduction) of the last step that needed one
        self.last_grad_norm: torch.Tensor | None = None
        self._plan_cache = None  # owned by the kernel backends; dropped on load_state_dict
        self._step_cache = None  # _StepCache of the last kernel-backend step
        super().__init__(params, defaults)
        self.state = _StateTable(self.state)
        self._compile_handle = _compile.register(self)  # names this optimizer inside compiled graphs
        device = self.param_groups[0]["params"][0].device
        # The schedule counter: updates applied so far. It lives on the device so that the
        # kernels read and advance it without the host; `_host_step` mirrors it for schedules
        # that are plain Python callables (evaluated on the host).
        self._schedule_step = torch.zeros((), dtype=torch.int64, device=device)
        self._host_step = 0
        # Steps skipped on the device (GradScaler's found_inf, or skip_nonfinite): read it when you log.
        self.skipped_steps = torch.zeros((), dtype=torch.int64, device=device)

    # ----- param groups -------------------------------------------------------------------
    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        try:
            self._check_group_hypers(self.param_groups[-1])
            self._check_group_options(self.param_groups[-1])
            # DTensor params and the lean states they cannot take: refused here already, as
            # at every step (a step called by torch.distributed.checkpoint would leave grads).
            sharded = any(_distributed.is_dtensor(p) for group in self.param_groups for p in group["params"])
            _quantized.check_step(self.param_groups, sharded)
            _split_master.check_step(self.param_groups, sharded)
        except Exception:
            self.param_groups.pop()  # a refused group must not stay (nor block a corrected retry)
            raise
        self._flat_params = [p for group in self.param_groups for p in group["params"]]
        self._sharded = any(map(_distributed.is_dtensor, self._flat_params))
        self._checked_state_version = None
        self._plan_cache = None
        self._step_cache = None
        if hasattr(self, "norm_group"):  # (not yet while the base __init__ adds the first groups)
            self._check_norm_group()

    # ----- the step -----------------------------------------------------------------------
    _state_names: tuple[str, ...]  # the moment tensors of this kind, stored in state_dtype
    _required_state: tuple[str, ...]  # what a param's existing state must hold for a step to read it

    def _check_groups(self) -> None:
        """The constructor's checks of every group's hyperparameters, again (after a user wrote
        ``param_groups`` by hand, or a state dict was loaded)."""
        for group in self.param_groups:
            self._check_group_hypers(group)
            self._check_group_options(group)

    def _check_group_options(self, group: dict) -> None:
        """The bf16/fp16 and lean-state options of a group; 8-bit moments and split master weights
        are AdamW's and LION's (the kernels decode them in those rules only)."""
        _precision.check_group_options(group)
        if self._kind not in ("adamw", "lion") and (
            group.get("state_dtype") == "int8" or group.get("master_weights") == "split"
        ):
            raise ValueError(
                f"{type(self).__name__} does not support state_dtype='int8' or master_weights='split' "
                "(AdamW and Lion do)"
            )

    def _agc_configured(self) -> bool:
        """AGC is set in some group: ``last_grad_norm`` is then reported on every step, also
        when only groups without AGC have grads."""
        return any(group["agc_clip_factor"] is not None for group in self.param_groups)

    @torch.no_grad()
    def step(self, closure=None):
        """One optimizer step. Returns ``closure()``'s loss when a closure is given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if torch.compiler.is_compiling():
            _compile.step_in_graph(self)  # one opaque op in the graph; it runs _eager_step
        elif closure is None and _called_to_make_states():
            self._make_states()
        else:
            self._eager_step()
        return loss

    def _eager_step(self) -> None:
        if self._host_step == 0 and self.schedule is not None:
            warn_if_torch_scheduler_attached(self)  # a second schedule, stacked by a trainer
        # Everything is checked before anything is modified: a failed step changes nothing.
        _check_clip_options(self.max_grad_norm, self.clip_value)
        self.__dict__.pop("_made_for_load", None)  # DCP's placeholder states are real ones now
        params, grads, counts = self._active()
        if not params:
            if self.norm_group is not None:
                self._join_norm_group()  # the other stages wait in the collective for this one
            return
        device = params[0].device
        backend = _backends.choose(self.backend, device)
        _quantized.check_step(self.param_groups, self._sharded)
        _split_master.check_step(self.param_groups, self._sharded)
        if self.norm_group is not None:
            self._check_norm_group()  # groups may have been edited since
        if backend not in self._kind_backends and (self.backend == "auto" or backend == "cpu"):
            # auto: the reference, where the chosen backend lacks this kind's rule; the cpu backend
            # takes the reference's step for what it does not fuse (here: the whole rule).
            backend = "torch"
        if backend not in self._kind_backends:
            raise RuntimeError(
                f"{type(self).__name__} is not implemented by the {backend!r} backend; use one of {self._kind_backends}"
            )
        local_params, grads, sources = self._local_items(params, grads)
        if backend in ("triton", "cuda", "cpu"):
            items = self._kernel_items(local_params, grads, counts, backend, sources)
        else:
            pairs = self._with_groups(local_params, counts)
            for (param, group), grad in zip(pairs, grads):
                self._check_param(param, grad, group)
            _fused.check_states(pairs, self._state_view(pairs, sources), required=self._required_state)
            self._check_groups()  # values written into param_groups since: the update reads them all
            items = [(p, group, self._local_state(s, group)) for (p, group), s in zip(pairs, sources or params)]
        if self._schedule_step.device != device:  # the model moved after the optimizer was made
            self._schedule_step = self._schedule_step.to(device)
            self.skipped_steps = self.skipped_steps.to(device)
        if backend in ("triton", "cuda"):
            if backend == "triton":
                from ._triton import step_ as fused_step_
            else:
                from ._cuda import step_ as fused_step_

            device_schedule = isinstance(self.schedule, Schedule) or self.schedule is None
            host_multiplier = None if device_schedule else self._schedule_on_host()[0]
            active_groups = [group for group, count in zip(self.param_groups, counts) if count]
            self.last_grad_norm = fused_step_(self, items, grads, host_multiplier, self._step_cache.key, active_groups)
        else:
            scale, offset = self._schedule_on_host()
            host_step_ = functools.partial(_cpu.step_, self) if backend == "cpu" else reference.step_
            self.last_grad_norm, applied = host_step_(
                self._kind, items, grads, scale, offset, self.max_grad_norm,
                grad_scale=getattr(self, "grad_scale", None), found_inf=getattr(self, "found_inf", None),
                skip_nonfinite=self.skip_nonfinite, counter=self._schedule_step, clip_value=self.clip_value,
                report_norm=self._agc_configured(),
                positions=self._positions(params) if any(g["stochastic_rounding"] for g in self.param_groups) else None,
                reduction=self._reduction(params), **self._reference_options(),
            )  # fmt: skip
            if applied:
                self._schedule_step += 1
            else:
                self.skipped_steps += 1
                return
        self._host_step += 1

    def _reference_options(self) -> dict:
        """Extra keyword arguments of ``reference.step_`` for this kind (schedule-free's per-group sums)."""
        return {}

    # ----- state dict ---------------------------------------------------------------------


class AdamW(_FusedOptimizer):
    """AdamW with decoupled weight decay, fused global-norm/AGC clipping and device schedules.

    Same update as ``torch.optim.AdamW`` preceded by ``clip_grad_norm_`` (after AGC, when both
    are on), with the lr of update ``k`` multiplied by ``schedule(k)``. For bf16/fp16 params:
    ``master_weights`` (an fp32 copy in the state), ``stochastic_rounding`` (bf16, keyed on
    ``seed``), ``state_dtype`` (the moments' dtype) and ``grad_attribute`` (e.g. fp32
    ``main_grad`` buffers); see the README, "bf16 and fp16 parameters".
    """

    _kind = "adamw"
    _state_names = ("exp_avg", "exp_avg_sq")
    _required_state = ("step", "exp_avg", "exp_avg_sq")

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        schedule=None,
        max_grad_norm: float | None = None,
        clip_value: float | None = None,
        agc_clip_factor: float | None = None,
        agc_eps: float = 1e-3,
        skip_nonfinite: bool = False,
        master_weights: bool | str = False,
        stochastic_rounding: bool = False,
        state_dtype: torch.dtype | str | None = None,
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
            amsgrad=bool(amsgrad),
        )
        defaults, options = _kind_arguments(rule, locals())
        super().__init__(params, defaults, **options)


class Lion(_FusedOptimizer):
    """LION (Chen et al. 2023) as in lion-pytorch, with fused clipping and device schedules.

    ``p *= 1 - lr * wd; p -= lr * sign(b1 * m + (1 - b1) * g); m = b2 * m + (1 - b2) * g``.
    The bf16/fp16 options are AdamW's.
    """

    _kind = "lion"
    _state_names = ("exp_avg",)
    _required_state = ("exp_avg",)

    def __init__(
        self,
        params,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        schedule=None,
        max_grad_norm: float | None = None,
        clip_value: float | None = None,
        agc_clip_factor: float | None = None,
        agc_eps: float = 1e-3,
        skip_nonfinite: bool = False,
        master_weights: bool | str = False,
        stochastic_rounding: bool = False,
        state_dtype: torch.dtype | str | None = None,
        seed: int = 0,
        grad_attribute: str = "grad",
        norm_group=None,
        backend: str = "auto",
    ):
        rule = dict(
            lr=lr,
            betas=tuple(betas) if isinstance(betas, list) else betas,
            weight_decay=weight_decay,
        )
        defaults, options = _kind_arguments(rule, locals())
        super().__init__(params, defaults, **options)
