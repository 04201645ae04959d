"""The ``triton`` backend: input checks and the launcher of the kernels in ``kernels.py``.

Imported only when the backend is used, so that ``import fusedlr`` never needs Triton.
"""

from __future__ import annotations

import torch
import triton.language as tl

from .. import _backends, _plan
from . import kernels

SUPPORTED_DTYPES = {
    torch.float32: tl.float32,
    torch.float64: tl.float64,
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
}
# Elements per vector operation inside a chunk. The CPU interpreter pays per operation, not
# per element, so it gets wider vectors; the arithmetic is the same.
BLOCK = 16384 if _backends.interpreting_triton() else 1024
FINALIZE_BLOCK = 1024  # tensors per vector operation in the finalize launch
REDUCE_BLOCK = 256  # chunk partials per vector operation in the per-tensor reduction


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


def check_inputs(active, devices, state) -> None:
    """Raise before anything is touched if the kernels cannot run these tensors correctly."""
    if len(devices) > 1:
        names = ", ".join(sorted(str(d) for d in devices))
        raise RuntimeError(
            f"fusedlr: the triton backend runs one device per optimizer; parameters with grads are on {names}. "
            "Use one optimizer per device, or backend='torch'."
        )
    for param, _ in active:
        if param.dtype not in SUPPORTED_DTYPES:
            raise RuntimeError(f"fusedlr: the triton backend does not support parameters of dtype {param.dtype}")
        if param.grad.dtype != param.dtype or param.grad.device != param.device:
            raise RuntimeError(
                f"fusedlr: grad ({param.grad.dtype}, {param.grad.device}) does not match its parameter "
                f"({param.dtype}, {param.device})"
            )
        for name, value in state.get(param, {}).items():
            if isinstance(value, torch.Tensor) and value.device != param.device:
                raise RuntimeError(
                    f"fusedlr: state {name!r} is on {value.device}, its parameter on {param.device}; "
                    "load the state dict after moving the model, or move the state with the parameters."
                )
        if param.numel() == 0:
            continue
        strides = _dense_strides(param)
        if strides is None:
            raise RuntimeError(
                f"fusedlr: the triton backend needs parameters that are dense in memory; a parameter of shape "
                f"{tuple(param.shape)} has strides {param.stride()} with gaps. "
                "Make it contiguous or use backend='torch'."
            )
        others = [("grad", param.grad)] + [(k, v) for k, v in state.get(param, {}).items() if k != "step"]
        for name, other in others:
            if _dense_strides(other) != strides:
                raise RuntimeError(
                    f"fusedlr: {name} of a parameter of shape {tuple(param.shape)} has strides {other.stride()}, "
                    f"its parameter {param.stride()}; the triton backend needs the same memory layout."
                )


def step_(opt, items, host_multiplier):
    """One fused step of ``opt`` over ``items`` (``(param, group, state)``); returns the norm."""
    groups = opt.param_groups
    group_index = {id(group): i for i, group in enumerate(groups)}
    key = _plan.plan_key(items, group_index)
    plan = opt._plan_cache
    if plan is None or plan.key != key:
        plan = opt._plan_cache = _plan.build_plan(items, groups, key)
    _plan.upload_hyper(plan, _plan.hyper_values(groups, opt.schedule, host_multiplier, opt.max_grad_norm))

    has_agc = any(group["agc_clip_factor"] is not None for _, group, _ in items)
    has_clip = opt.max_grad_norm is not None
    has_norms = has_agc or has_clip
    is_adamw = opt._kind == "adamw"
    counter = opt._schedule_step
    norm = torch.empty((), dtype=torch.float32, device=plan.device) if has_norms else None
    T, C = plan.num_tensors, plan.chunk_table.shape[1]

    if has_norms:
        for bucket in plan.buckets:
            if bucket.num_chunks == 0:
                continue
            elem = SUPPORTED_DTYPES[bucket.dtype]
            kernels._grad_sumsq_kernel[(bucket.num_chunks,)](
                plan.tensor_table, T, plan.chunk_table, C, bucket.chunk_begin, plan.partial_grad, plan.partial_param,
                ELEM=elem, COMPUTE=_compute_dtype(bucket.dtype), WITH_PARAM=has_agc,
                CHUNK=_plan.CHUNK_SIZE, BLOCK=BLOCK,
            )  # fmt: skip
        kernels._tensor_sumsq_kernel[(T,)](
            plan.tensor_table, T, plan.partial_grad, plan.partial_param,
            plan.tensor_grad_sumsq, plan.tensor_param_sumsq, WITH_PARAM=has_agc, BLOCK=REDUCE_BLOCK,
        )  # fmt: skip
    kernels._finalize_kernel[(1,)](
        plan.tensor_table, T, plan.hyper, plan.num_groups, plan.tensor_grad_sumsq, plan.tensor_param_sumsq,
        plan.coef, counter, norm if has_norms else plan.coef,
        HAS_NORMS=has_norms, HAS_CLIP=has_clip, HAS_AGC=has_agc, IS_ADAMW=is_adamw, BLOCK=FINALIZE_BLOCK,
        REGISTERS=_plan.schedule_registers(opt.schedule), num_warps=1,
    )  # fmt: skip
    update = kernels._adamw_update_kernel if is_adamw else kernels._lion_update_kernel
    for bucket in plan.buckets:
        if bucket.num_chunks == 0:
            continue
        update[(bucket.num_chunks,)](
            plan.tensor_table, T, plan.chunk_table, C, bucket.chunk_begin, plan.coef,
            ELEM=SUPPORTED_DTYPES[bucket.dtype], COMPUTE=_compute_dtype(bucket.dtype),
            IS_FP64=bucket.dtype == torch.float64, CHUNK=_plan.CHUNK_SIZE, BLOCK=BLOCK,
        )  # fmt: skip
    return norm


def _compute_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32
