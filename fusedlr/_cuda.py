"""The ``cuda`` backend: loads the compiled extension ``fusedlr._C`` and drives it with the same
plan the Triton backend uses. The extension takes addresses, sizes and torch's current stream
as integers, so this file is where torch tensors become numbers.

``import fusedlr`` works without the extension: ``load()`` returns None and
``available_backends()`` leaves "cuda" out.
"""

from __future__ import annotations

import functools

import torch

from . import _fused, _plan
from .schedules import program

DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}


def _expected_layout() -> dict:
    """The numbers csrc/layout.h must hold, from the Python definitions."""
    expected = {}
    for prefix, columns in (
        ("tensor", _plan.TENSOR_COLUMNS),
        ("group", _plan.GROUP_COLUMNS),
        ("schedule", _plan.SCHEDULE_SLOTS),
        ("coef", _plan.COEF_COLUMNS),
    ):
        expected.update({f"{prefix}.{name}": i for i, name in enumerate(columns)})
    expected.update({"tensor.columns": len(_plan.TENSOR_COLUMNS), "group.columns": len(_plan.GROUP_COLUMNS),
                     "schedule.slots": len(_plan.SCHEDULE_SLOTS), "coef.columns": len(_plan.COEF_COLUMNS)})  # fmt: skip
    expected.update({f"op.{name}": code for name, code in program.OPCODES.items()})
    expected["program.instruction_width"] = program.INSTRUCTION_WIDTH
    expected["program.max_registers"] = program.MAX_REGISTERS
    expected.update({f"dtype.{str(dtype).removeprefix('torch.')}": code for dtype, code in DTYPE_CODES.items()})
    return expected


@functools.cache
def load():
    """The extension module, or None when it was not built. Raises if it disagrees with Python."""
    try:
        from . import _C
    except ImportError:
        return None
    built = _C.layout()
    expected = _expected_layout()
    wrong = {k: (built.get(k), v) for k, v in expected.items() if built.get(k) != v}
    if wrong:
        raise ImportError(f"fusedlr._C was built from another version of the tables (csrc vs Python): {wrong}")
    return _C


def available() -> bool:
    return load() is not None and torch.cuda.is_available()


def _stored_alike(bucket) -> bool:
    return bucket.grad_dtype == bucket.dtype == bucket.state_dtype and not bucket.master and not bucket.stochastic


def step_(opt, items, grads, host_multiplier, key, active_groups):
    """One fused step of ``opt`` over ``items`` with the CUDA kernels; returns the norm."""
    ext = load()
    plan, flags = _fused.prepare(opt, items, grads, host_multiplier, key, active_groups)
    device = plan.device
    norm = torch.empty((), dtype=torch.float32, device=device) if flags.has_norms else None
    tables = plan.tensor_table.data_ptr(), plan.num_tensors
    chunks = plan.chunk_table.data_ptr(), plan.chunk_table.shape[1]

    def address(tensor):
        return 0 if tensor is None else tensor.data_ptr()

    status = plan.status.data_ptr()
    with torch.cuda.device(device):
        stream = torch.cuda.current_stream(device).cuda_stream
        if flags.has_norms:
            for bucket in plan.buckets:
                ext.grad_sumsq(DTYPE_CODES[bucket.dtype], DTYPE_CODES[bucket.grad_dtype], *tables, *chunks,
                               bucket.chunk_begin, bucket.num_chunks,
                               _plan.CHUNK_SIZE, plan.partial_grad.data_ptr(), plan.partial_param.data_ptr(),
                               flags.has_agc, 0, plan.hyper.data_ptr(), plan.num_groups, address(flags.grad_scale),
                               flags.has_clip_value, stream)  # fmt: skip
            ext.tensor_sumsq(*tables, plan.partial_grad.data_ptr(), plan.partial_param.data_ptr(),
                             plan.tensor_grad_sumsq.data_ptr(), plan.tensor_param_sumsq.data_ptr(), flags.has_agc,
                             0, stream)  # fmt: skip
        ext.finalize(*tables, plan.hyper.data_ptr(), plan.num_groups, plan.tensor_grad_sumsq.data_ptr(),
                     plan.tensor_param_sumsq.data_ptr(), plan.coef.data_ptr(), opt._schedule_step.data_ptr(),
                     address(norm), flags.has_norms, flags.has_clip, flags.has_agc, flags.is_adamw,
                     address(flags.grad_scale), address(flags.found_inf), status, opt.skipped_steps.data_ptr(),
                     flags.skip_nonfinite, flags.has_clip_value, stream)  # fmt: skip
        update = ext.adamw_update if flags.is_adamw else ext.lion_update
        for bucket in plan.buckets:
            chunk_range = (bucket.chunk_begin, bucket.num_chunks, _plan.CHUNK_SIZE)
            if _stored_alike(bucket):  # the vectorised kernels: everything in the param's dtype
                update(DTYPE_CODES[bucket.dtype], *tables, *chunks, *chunk_range, plan.coef.data_ptr(), status, stream)
            else:  # master copy, stochastic rounding, or grads/moments in another dtype
                ext.mixed_update(flags.is_adamw, DTYPE_CODES[bucket.dtype], DTYPE_CODES[bucket.grad_dtype],
                                 DTYPE_CODES[bucket.state_dtype], *tables, *chunks, *chunk_range,
                                 plan.coef.data_ptr(), status, bucket.stochastic, stream)  # fmt: skip
    return norm
