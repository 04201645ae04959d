"""What the kernel backends (triton, cuda) share: the input checks and the step's preparation
(plan lookup, hyperparameter upload, the structural flags). One plan, two backends."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import _plan, _quantized, _split_master

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _dense_strides(tensor: torch.Tensor):
    """The strides of a tensor whose elements fill one gap-free block of memory, else None.

    Elementwise kernels can treat such a tensor as flat, provided every tensor they combine
    with it (grad, states) has the same strides.
    """
    dims = sorted((stride, size) for stride, size in zip(tensor.stride(), tensor.shape) if size != 1)
    expected = 1
    for stride, size in dims:
        if stride != expected:
            return None
        expected *= size
    return tuple(stride for stride, size in zip(tensor.stride(), tensor.shape) if size != 1)


def _param_strides(param):
    """The dense strides of a parameter, or a clear error for one with gaps in memory."""
    strides = _dense_strides(param)
    if strides is None:
        raise RuntimeError(
            f"fusedlr: the fused backends need parameters that are dense in memory; a parameter of shape "
            f"{tuple(param.shape)} has strides {param.stride()} with gaps. Make it contiguous or use backend='torch'."
        )
    return strides


# The classes whose data_ptr() is where their elements are. A subclass (a quantised tensor, a
# DTensor that reached here unwrapped, a wrapper of several tensors) may hold them elsewhere.
_ADDRESSABLE = (torch.Tensor, torch.nn.Parameter)


def check_addressable(*tensors, what="a parameter or its grad") -> None:
    """Refuse, before any launch, a tensor the kernels cannot address by ``data_ptr()``."""
    for tensor in tensors:
        if type(tensor) not in _ADDRESSABLE:
            raise RuntimeError(
                f"fusedlr: the fused backends cannot address {what} of type {type(tensor).__name__} (a tensor "
                "subclass); DTensors are supported as parameters, other subclasses need backend='torch'"
            )
        if tensor.numel() and tensor.data_ptr() == 0:
            raise RuntimeError(
                f"fusedlr: {what} of shape {tuple(tensor.shape)} on {tensor.device} has no memory the kernels can "
                "address (data_ptr() is 0); use backend='torch'"
            )


def check_grad(param, grad) -> None:
    """The per-step check of a grad tensor the kernels have not seen: layout against its param."""
    if param.numel() > 0:
        _param_strides(param)
    if grad.stride() != param.stride() and param.numel() > 0 and _dense_strides(grad) != _dense_strides(param):
        raise RuntimeError(
            f"fusedlr: grad of a parameter of shape {tuple(param.shape)} has strides {grad.stride()}, "
            f"its parameter {param.stride()}; the fused backends need the same memory layout."
        )


_INTEGER_STATES = (*_quantized.CODE_KEYS, _split_master.RESIDUAL_KEY)  # 8-bit states, checked apart


def check_states(pairs, state, *, kernels=False, required=()) -> None:
    """Raise before anything is touched if a param's existing state cannot serve it: a state
    without one of the ``required`` entries (one loaded from another optimizer: torch raises
    ``KeyError`` there too), a non-tensor, another device, another shape, a ``step`` of more
    than one element; for the kernels also another memory layout, and a ``step`` that is not
    float32. (A state of another floating dtype than the options ask for is cast by
    ``_init_state``, after every check.)"""
    for param, _ in pairs:
        param_state = state.get(param, {})
        held = set(param_state) | {
            moment for moment, (codes, _, _) in _quantized.QUANTIZED_KEYS.items() if codes in param_state
        }
        missing = [name for name in required if name not in held] if param_state else []
        if missing:
            raise KeyError(
                f"fusedlr: the state of a parameter of shape {tuple(param.shape)} lacks "
                f"{', '.join(map(repr, missing))} "
                f"(it holds {sorted(map(str, param_state))}); was it loaded from another optimizer's state dict?"
            )
        for name, value in param_state.items():
            if not isinstance(value, torch.Tensor):
                raise RuntimeError(f"fusedlr: state {name!r} of a parameter is a {type(value).__name__}, not a tensor")
            if kernels:
                check_addressable(value, what=f"state {name!r}")
            if value.device != param.device:
                raise RuntimeError(
                    f"fusedlr: state {name!r} is on {value.device}, its parameter on {param.device}; "
                    "load the state dict after moving the model, or move the state with the parameters."
                )
            if name in _quantized.SCALE_KEYS:
                continue  # checked above
            if name == "step":
                if value.numel() != 1 or value.is_complex() or value.dtype == torch.bool:
                    raise RuntimeError(f"fusedlr: state 'step' must be a one-element real tensor; got {value!r}")
                if kernels and value.dtype != torch.float32:
                    raise RuntimeError(f"fusedlr: state 'step' must be a one-element float32 tensor; got {value!r}")
                continue
            if value.shape != param.shape or not (value.is_floating_point() or name in _INTEGER_STATES):
                raise RuntimeError(
                    f"fusedlr: state {name!r} is {value.dtype} of shape {tuple(value.shape)}; its parameter is "
                    f"{param.dtype} of shape {tuple(param.shape)}"
                )
            if kernels and param.numel() and _dense_strides(value) != _dense_strides(param):
                raise RuntimeError(
                    f"fusedlr: state {name!r} of a parameter of shape {tuple(param.shape)} has strides "
                    f"{value.stride()}, its parameter {param.stride()}; the fused backends need the same memory layout."
                )
        _quantized.check_quantized_states(param, state.get(param, {}))
        _split_master.check_state(param, state.get(param, {}))


def check_inputs(pairs, grads, devices, state, *, required=()) -> None:
    """Raise before anything is touched if the kernels cannot run these tensors correctly."""
    if len(devices) > 1:
        names = ", ".join(sorted(str(d) for d in devices))
        raise RuntimeError(
            f"fusedlr: the fused backends run one device per optimizer; parameters with grads are on {names}. "
            "Use one optimizer per device, or backend='torch'."
        )
    for (param, _), grad in zip(pairs, grads):
        check_addressable(param, grad)
        if param.dtype not in SUPPORTED_DTYPES:
            raise RuntimeError(f"fusedlr: the fused backends do not support parameters of dtype {param.dtype}")
        check_grad(param, grad)
    check_distinct(pairs)
    check_states(pairs, state, kernels=True, required=required)


def check_distinct(pairs) -> None:
    """The kernels update every tensor in one pass, in parallel: a param listed twice (tied
    weights listed by hand) would be read and written by two programs at once. torch steps it
    twice in sequence, and so does backend='torch'; the fused backends refuse it clearly."""
    seen_ids, seen_addresses = set(), set()
    for param, _ in pairs:
        twice = id(param) in seen_ids
        if twice or (param.numel() and param.data_ptr() in seen_addresses):
            raise RuntimeError(
                "fusedlr: "
                + ("a parameter is listed twice" if twice else "two parameters share memory")
                + f" (shape {tuple(param.shape)}); the fused backends update every tensor once per step, in "
                "parallel. List each tensor once (tied weights: once), or use backend='torch', which steps a "
                "repeated parameter once per listing, as torch.optim does."
            )
        seen_ids.add(id(param))
        if param.numel():
            seen_addresses.add(param.data_ptr())


@dataclass(frozen=True)
class StepFlags:
    has_agc: bool
    has_clip: bool
    has_clip_value: bool
    skip_nonfinite: bool
    grad_scale: torch.Tensor | None  # set by torch.amp.GradScaler.step, None once unscaled
    found_inf: torch.Tensor | None
    reduction: object | None  # _distributed.NormReduction: the norms' collective, or None
    report_norm: bool = False  # AGC is set in a group without grads this step: still report the norm
    rule: int = 0  # _plan.RULES code of the update rule
    group_sums: torch.Tensor | None = None  # schedule-free's per-group device bookkeeping ([4, G] float64)

    @property
    def has_norms(self) -> bool:
        return self.has_agc or self.has_clip or self.skip_nonfinite or self.report_norm


def prepare(opt, items, grads, host_multiplier, key, active_groups):
    """The plan for ``items`` (cached on ``opt`` under ``key``, from ``_kernel_items``), its
    hyperparameters uploaded, and the flags (AGC is on when a group with grads asks for it)."""
    groups = opt.param_groups
    plan = opt._plan_cache
    if plan is None or plan.key != key:
        positions = opt._positions([param for param, _, _ in items])
        plan = opt._plan_cache = _plan.build_plan(items, grads, groups, key, positions)
    clip_value = getattr(opt, "clip_value", None)
    try:
        values = _plan.hyper_values(groups, opt.schedule, host_multiplier, opt.max_grad_norm, clip_value)
    except (TypeError, ValueError):
        opt._check_groups()  # a group value set after construction is not a number: say which
        raise
    _plan.upload_hyper(plan, values)
    _plan.copy_tensor_hypers(plan, groups)
    flags = StepFlags(
        has_agc=any(group["agc_clip_factor"] is not None for group in active_groups),
        has_clip=opt.max_grad_norm is not None,
        has_clip_value=clip_value is not None,
        skip_nonfinite=opt.skip_nonfinite,
        grad_scale=_on(getattr(opt, "grad_scale", None), plan.device),
        found_inf=_on(getattr(opt, "found_inf", None), plan.device),
        reduction=opt._reduction(opt._step_cache.sources, plan.order),
        report_norm=any(group["agc_clip_factor"] is not None for group in groups),
        rule=_plan.RULES[opt._kind],
        group_sums=getattr(opt, "_group_sums", None),
    )
    return plan, flags


def reduce_norms(plan, flags):
    """Between the per-tensor sums and the finalize: complete the sums across ranks (one
    collective) when the step is distributed. Returns the found_inf the finalize reads."""
    if flags.reduction is None or not (flags.has_norms or flags.found_inf is not None):
        return flags.found_inf
    return flags.reduction.reduce_(plan.sumsq, plan.num_tensors, flags.found_inf, norms=flags.has_norms)


def _on(tensor, device):
    """A GradScaler scalar as a float32 tensor on the params' device (no host synchronisation)."""
    if tensor is None:
        return None
    return tensor.to(device=device, dtype=torch.float32, non_blocking=True)
