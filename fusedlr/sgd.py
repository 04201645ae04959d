"""fusedlr.SGD: torch.optim.SGD's update on fusedlr's fused step (clip, AGC, device schedule)."""

from __future__ import annotations

from numbers import Real

import torch

from . import _precision
from .optim import _check_real, _FusedOptimizer, _kind_arguments


def _check_sgd_hypers(group: dict) -> None:
    """torch.optim.SGD's checks (same messages), and fusedlr's clip options."""
    for key in ("lr", "momentum", "dampening", "weight_decay", "nesterov", "agc_clip_factor", "agc_eps"):
        if key not in group:
            raise KeyError(f"fusedlr: a param group lacks the key {key!r}")
    _check_real("learning rate", group["lr"], low=0.0, tensor_name="lr")
    _check_real("momentum value", group["momentum"], low=0.0)
    dampening = group["dampening"]
    if not (isinstance(dampening, Real) and not isinstance(dampening, bool)) or dampening != dampening:
        raise ValueError(f"Invalid dampening value: {dampening!r}")
    _check_real("weight_decay value", group["weight_decay"], low=0.0)
    if group["nesterov"] and (group["momentum"] <= 0 or dampening != 0):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening")
    if group["agc_clip_factor"] is not None:
        _check_real("agc_clip_factor", group["agc_clip_factor"], low=0.0, low_inclusive=False)
    _check_real("agc_eps", group["agc_eps"], low=0.0, low_inclusive=False)


class SGD(_FusedOptimizer):
    """SGD with momentum, dampening, nesterov and weight decay as ``torch.optim.SGD``, with
    fusedlr's fused global-norm/AGC/value clipping, device schedules and bf16 options.

    ``decoupled_weight_decay=True`` decays as AdamW does (``p *= 1 - lr * wd``) instead of adding
    ``wd * p`` to the grad. The state holds torch's ``momentum_buffer`` (only with momentum) and a
    ``step`` count of it (0 until its first update, which copies the grad in, as torch's clone);
    torch.optim.SGD ignores ``step``, and a buffer loaded without one counts as written.
    Every backend (``torch``, ``cpu``, ``triton``, ``cuda``).
    """

    _kind = "sgd"
    _state_names = ()
    _required_state = ()
    _check_group_hypers = staticmethod(_check_sgd_hypers)

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        decoupled_weight_decay: bool = False,
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
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=bool(nesterov),
            decoupled_weight_decay=bool(decoupled_weight_decay),
        )
        defaults, options = _kind_arguments(rule, locals())
        super().__init__(params, defaults, **options)

    def _init_state(self, param: torch.Tensor, group: dict) -> dict:
        state = super()._init_state(param, group)  # the fp32 master copy, where asked for
        dtype = _precision.state_dtype(param, group)
        if group["momentum"] != 0 and "momentum_buffer" not in state:
            # Made before the launch (the kernels address it), written by its first update.
            state["momentum_buffer"] = torch.zeros_like(param, dtype=dtype, memory_format=torch.preserve_format)
            state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
        if "momentum_buffer" in state:
            if "step" not in state:  # loaded from torch.optim.SGD: a buffer it wrote
                state["step"] = torch.ones((), dtype=torch.float32, device=param.device)
            if state["momentum_buffer"].dtype != dtype:
                state["momentum_buffer"] = state["momentum_buffer"].to(dtype)
        return state

    def _load_state_dict(self, state_dict: dict) -> None:
        # Older torch.optim.SGD state dicts hold momentum_buffer=None where momentum is 0.
        state_dict = dict(state_dict)
        state_dict["state"] = {
            index: {name: value for name, value in state.items() if not (name == "momentum_buffer" and value is None)}
            for index, state in state_dict["state"].items()
        }
        super()._load_state_dict(state_dict)
