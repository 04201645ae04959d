"""The ``triton`` backend: the launcher of the kernels in ``kernels.py``.

Imported only when the backend is used, so that ``import fusedlr`` never needs Triton.
"""

from __future__ import annotations

import torch
import triton.language as tl

from .. import _backends, _fused, _plan, _quantized
from . import kernels

TRITON_DTYPES = {
    torch.float32: tl.float32,
    torch.float64: tl.float64,
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
}
# Elements per vector operation inside a chunk: a chunk is walked in unmasked full blocks, then
# one masked tail. The CPU interpreter pays per operation, not per element, so it gets wider
# vectors (the tests' small chunks are then all tail; tests/test_launches.py narrows BLOCK to
# run the full-block path too); the arithmetic is the same.
BLOCK = 16384 if _backends.interpreting_triton() else 1024
FINALIZE_BLOCK = 1024  # tensors per vector operation in the finalize launch
REDUCE_BLOCK = 256  # chunk partials per vector operation in the per-tensor reduction


def step_(opt, items, grads, host_multiplier, key, active_groups):
    """One fused step of ``opt`` over ``items`` (``(param, group, state)``); returns the norm."""
    plan, flags = _fused.prepare(opt, items, grads, host_multiplier, key, active_groups)
    has_agc, has_clip, has_norms, rule = flags.has_agc, flags.has_clip, flags.has_norms, flags.rule
    grad_scale = flags.grad_scale if flags.grad_scale is not None else plan.status  # a dummy when absent
    counter = opt._schedule_step
    norm = torch.empty((), dtype=torch.float32, device=plan.device) if has_norms else None
    T, C = plan.num_tensors, plan.chunk_table.shape[1]

    if has_norms:
        for bucket in plan.buckets:
            if bucket.num_chunks == 0:
                continue
            elem = TRITON_DTYPES[bucket.dtype]
            kernels._grad_sumsq_kernel[(bucket.num_chunks,)](
                plan.tensor_table, T, plan.chunk_table, C, bucket.chunk_begin, plan.partial_grad, plan.partial_param,
                plan.hyper, plan.num_groups, grad_scale,
                ELEM=elem, GRAD_ELEM=TRITON_DTYPES[bucket.grad_dtype], COMPUTE=_compute_dtype(bucket.dtype),
                WITH_PARAM=has_agc, ALIGNED=bucket.aligned,
                CHUNK=_plan.CHUNK_SIZE, BLOCK=BLOCK,
                HAS_CLIP_VALUE=flags.has_clip_value,
                HAS_GRAD_SCALE=flags.has_clip_value and flags.grad_scale is not None,
            )  # fmt: skip
        kernels._tensor_sumsq_kernel[(T,)](
            plan.tensor_table, T, plan.partial_grad, plan.partial_param,
            plan.tensor_grad_sumsq, plan.tensor_param_sumsq, WITH_PARAM=has_agc, BLOCK=REDUCE_BLOCK,
        )  # fmt: skip
    found_inf = _fused.reduce_norms(plan, flags)  # across ranks, where the step is distributed
    kernels._finalize_kernel[(1,)](
        plan.tensor_table, T, plan.hyper, plan.num_groups, plan.tensor_grad_sumsq, plan.tensor_param_sumsq,
        plan.coef, counter, norm if has_norms else plan.coef,
        grad_scale,
        found_inf if found_inf is not None else plan.status,
        plan.status, opt.skipped_steps, flags.group_sums if flags.group_sums is not None else plan.status,
        HAS_NORMS=has_norms, HAS_CLIP=has_clip, HAS_AGC=has_agc, RULE=rule,
        HAS_GRAD_SCALE=flags.grad_scale is not None, HAS_FOUND_INF=flags.found_inf is not None,
        SKIP_NONFINITE=flags.skip_nonfinite, BLOCK=FINALIZE_BLOCK,
        REGISTERS=_plan.schedule_registers(opt.schedule), HAS_CLIP_VALUE=flags.has_clip_value, num_warps=1,
    )  # fmt: skip
    for bucket in plan.buckets:
        if bucket.num_chunks == 0:
            continue
        kernels._update_kernel[(bucket.num_chunks,)](
            plan.tensor_table, T, plan.chunk_table, C, bucket.chunk_begin, plan.coef, plan.status,
            ELEM=TRITON_DTYPES[bucket.dtype], GRAD_ELEM=TRITON_DTYPES[bucket.grad_dtype],
            STATE_ELEM=TRITON_DTYPES[bucket.state_dtype], COMPUTE=_compute_dtype(bucket.dtype),
            IS_FP64=bucket.dtype == torch.float64, RULE=rule, HAS_MAX=bucket.has_max, MASTER=bucket.master,
            STOCHASTIC=bucket.stochastic, ALIGNED=bucket.aligned,
            CHUNK=_plan.CHUNK_SIZE, BLOCK=BLOCK, HAS_CLIP_VALUE=flags.has_clip_value,
            QUANTIZED=bucket.quantized, QBLOCK=_quantization_block(bucket), SPLIT_MASTER=bucket.split_master,
        )  # fmt: skip
    return norm


def _quantization_block(bucket) -> int:
    """Elements per quantisation block; blocks must tile the chunks and the vectors exactly."""
    if bucket.quantized and (_plan.CHUNK_SIZE % _quantized.QUANT_BLOCK or BLOCK % _quantized.QUANT_BLOCK):
        raise RuntimeError(
            f"fusedlr: CHUNK_SIZE ({_plan.CHUNK_SIZE}) and BLOCK ({BLOCK}) must be multiples of the 8-bit "
            f"quantisation block ({_quantized.QUANT_BLOCK})"
        )
    return _quantized.QUANT_BLOCK


def _compute_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def schedule_on_device(schedule, ks: torch.Tensor):
    """``(scale, offset)`` of ``schedule`` at every update index in ``ks`` (int64, on the device
    the kernels run on), evaluated by the same device code as the finalize launch."""
    sched = torch.tensor(_plan.hyper_values([], schedule, None, None), dtype=torch.float64).to(ks.device)
    scale = torch.empty(ks.numel(), dtype=torch.float64, device=ks.device)
    offset = torch.empty_like(scale)
    if ks.numel():
        kernels._schedule_values_kernel[(ks.numel(),)](
            sched, ks, scale, offset, REGISTERS=_plan.schedule_registers(schedule), num_warps=1
        )
    return scale, offset
