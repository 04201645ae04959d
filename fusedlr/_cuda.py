"""The ``cuda`` backend: loads a compiled extension ``fusedlr._C_cu<major>`` and drives it with the same
plan the Triton backend uses. The extension takes addresses, sizes and torch's current stream
as integers, so this file is where torch tensors become numbers.

A wheel may hold one extension per CUDA major version (``_C_cu12``, ``_C_cu13``); ``load()``
imports the newest one the installed driver can run, asking the driver for the CUDA version it
supports (``cuDriverGetVersion``, which creates no context). ``import fusedlr`` works without
any extension: ``load()`` returns None and ``available_backends()`` leaves "cuda" out; where an
extension exists but the driver is too old for it, ``unavailable_reason()`` says so and
``backend="cuda"`` raises with that message, while ``auto`` keeps choosing triton.

A build can also load and still not run on a GPU: none of its architectures matches the GPU's
and its PTX is missing or newer than the driver can JIT-compile (a CUDA 13.1 build's PTX on a
13.0 driver). ``kernel_load_problem(device)`` asks the runtime once per device by loading one
kernel (``probe_kernels``; a CUDA context is made then, never at import), and ``backend="cuda"``
raises with its answer before a step touches anything.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib

import torch

from . import _fused, _plan, _quantized
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
    expected.update({f"rule_group.{name}": i for i, name in enumerate(_plan.RULE_GROUP_COLUMNS)})
    expected["rule_group.columns"] = len(_plan.RULE_GROUP_COLUMNS)
    expected.update({f"rule.{name}": code for name, code in _plan.RULES.items()})
    expected.update({f"group_sums.{name}": i for i, name in enumerate(_plan.GROUP_SUM_ROWS)})
    expected["group_sums.rows"] = len(_plan.GROUP_SUM_ROWS)
    expected["quant.block"] = _quantized.QUANT_BLOCK
    expected["quant.signed_levels"] = int(_quantized.SIGNED_LEVELS)
    expected["quant.unsigned_levels"] = int(_quantized.UNSIGNED_LEVELS)
    expected["quant.signed_slack_log2"] = _quantized.SIGNED_SLACK_LOG2
    return expected


# Newest first: the first one the driver supports is loaded.
EXTENSION_MAJORS = (13, 12)


@functools.cache
def driver_cuda_version() -> tuple[int, int] | None:
    """(major, minor) of the CUDA version the installed NVIDIA driver supports, or None when
    there is no driver (no libcuda). Creates no CUDA context."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int(0)
    if libcuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return None
    return version.value // 1000, (version.value % 1000) // 10


def _import(major):
    try:
        return importlib.import_module(f"{__package__}._C_cu{major}")
    except ImportError:
        return None


@functools.cache
def _choose():
    """(the extension to use or None, why none is usable or None)."""
    built = [(major, module) for major in EXTENSION_MAJORS if (module := _import(major)) is not None]
    if not built:
        return None, (
            "the compiled extension (fusedlr._C_cu12 / fusedlr._C_cu13) is not installed: build it with "
            "FUSEDLR_BUILD_CUDA=1 pip install . (README: 'Installing and building wheels')"
        )
    driver = driver_cuda_version()
    if driver is None:  # no driver: the newest, for its host-side code (tests on a CPU machine)
        return _checked(built[0][1]), None
    for major, module in built:
        if major <= driver[0]:
            return _checked(module), None
    majors = ", ".join(f"CUDA {m}" for m, _ in built)
    # A build for another supported major is a fix only where the driver supports one.
    other = [m for m in EXTENSION_MAJORS if m <= driver[0] and m not in dict(built)]
    fix = (
        f"Update the driver, or build fusedlr with a CUDA {other[0]} toolkit (README: 'Installing and building wheels')"
        if other
        else f"Update the driver (fusedlr's cuda backend needs CUDA {EXTENSION_MAJORS[-1]} or newer)"
    )
    return None, (
        f"this NVIDIA driver supports CUDA {driver[0]}.{driver[1]}, but fusedlr's extension was built for {majors} "
        f"(needs a driver for CUDA {built[-1][0]} or newer: 525+ for CUDA 12, 580+ for CUDA 13). {fix}; "
        "backend='auto' uses triton meanwhile"
    )


def _checked(module):
    built = module.layout()
    expected = _expected_layout()
    wrong = {k: (built.get(k), v) for k, v in expected.items() if built.get(k) != v}
    if wrong:
        raise ImportError(f"{module.__name__} was built from another version of the tables (csrc vs Python): {wrong}")
    return module


def load():
    """The extension to launch: the newest built one the driver supports (with no driver, the
    newest built one); None when there is none. Raises if it disagrees with the Python tables."""
    return _choose()[0]


def unavailable_reason() -> str | None:
    """Why no extension can run here, or None when one can. Once torch has initialised CUDA,
    that includes whether its kernels load on the current device."""
    if _choose()[1] is not None or not torch.cuda.is_initialized():
        return _choose()[1]
    return kernel_load_problem(torch.device("cuda", torch.cuda.current_device()))


def available() -> bool:
    """An extension loads and, once torch has initialised CUDA (no context is made here), its
    kernels load on the current device."""
    return load() is not None and torch.cuda.is_available() and unavailable_reason() is None


# CUDA's answers that say this build's kernels cannot load on this GPU with this driver: kept
# for the process. Any other error (out of memory making the context, a device held by another
# process, an earlier kernel's fault) is no fault of the build: reported as it is, asked again.
_BUILD_CANNOT_LOAD = (
    "cudaErrorNoKernelImageForDevice", "cudaErrorUnsupportedPtxVersion", "cudaErrorInvalidPtx",
    "cudaErrorInvalidKernelImage", "cudaErrorJitCompilerNotFound", "cudaErrorInsufficientDriver",
)  # fmt: skip


def kernel_load_problem(device: torch.device) -> str | None:
    """Why the extension's kernels cannot load on ``device``, or None when they can."""
    index = torch.cuda.current_device() if device.index is None else device.index
    if index not in _kernel_load_answers:
        ext = load()
        with torch.cuda.device(index):
            error, message, _, _ = ext.probe_kernels()
        if error and not message.startswith(_BUILD_CANNOT_LOAD):
            return f"the kernel-load check on GPU {index} failed: {message} (no fault of the build; asked again)"
        _kernel_load_answers[index] = _cannot_load(index, ext, message) if error else None
    return _kernel_load_answers[index]


_kernel_load_answers: dict[int, str | None] = {}  # the build's answer, per GPU index


def _cannot_load(index: int, ext, message: str) -> str:
    capability = "".join(map(str, torch.cuda.get_device_capability(index)))
    gpu = f"{torch.cuda.get_device_name(index)} (sm_{capability})"
    driver = driver_cuda_version()
    driver_cuda = "an unknown CUDA" if driver is None else f"CUDA {driver[0]}.{driver[1]}"
    built = ext.cuda_runtime_version()
    archs = ", ".join(f"sm_{arch // 10}" for arch in ext.compiled_archs())
    return (
        f"its kernels cannot load on {gpu} with this driver ({driver_cuda}): {message}. The extension was built "
        f"with CUDA {built // 1000}.{built % 1000 // 10} for {archs} (SASS for each, PTX for the newest), and a GPU "
        f"needs SASS for its own architecture or PTX from a CUDA no newer than the driver's. Rebuild for this GPU "
        f"(FUSEDLR_CUDA_ARCHS={capability} with a toolkit no newer "
        f"than {driver_cuda}; README: 'Installing and building wheels') or update the driver; backend='auto' uses "
        "triton meanwhile"
    )


def _stored_alike(bucket) -> bool:
    return bucket.grad_dtype == bucket.dtype == bucket.state_dtype and not (
        bucket.master or bucket.stochastic or bucket.quantized or bucket.split_master
    )


@contextlib.contextmanager
def _device_stream(device):
    """The launches' stream (torch's current one, as an integer) with ``device`` current. CPU
    tensors reach here only in tests, driving the extension's host twins (``_C.host``): stream 0."""
    if device.type == "cpu":
        yield 0
        return
    with torch.cuda.device(device):
        yield torch.cuda.current_stream(device).cuda_stream


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
    with _device_stream(device) as stream:
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
        found_inf = _fused.reduce_norms(plan, flags)  # across ranks, where the step is distributed
        ext.finalize(*tables, plan.hyper.data_ptr(), plan.num_groups, plan.tensor_grad_sumsq.data_ptr(),
                     plan.tensor_param_sumsq.data_ptr(), plan.coef.data_ptr(), opt._schedule_step.data_ptr(),
                     address(norm), flags.has_norms, flags.has_clip, flags.has_agc, flags.rule,
                     address(flags.group_sums), address(flags.grad_scale), address(found_inf), status,
                     opt.skipped_steps.data_ptr(), flags.skip_nonfinite, flags.has_clip_value, stream)  # fmt: skip
        for bucket in plan.buckets:
            chunk_range = (bucket.chunk_begin, bucket.num_chunks, _plan.CHUNK_SIZE)
            if bucket.quantized:  # 8-bit moments: decoded, updated and encoded by one warp per block
                ext.quantized_update(flags.rule, DTYPE_CODES[bucket.dtype], DTYPE_CODES[bucket.grad_dtype], *tables,
                                     *chunks, *chunk_range, plan.coef.data_ptr(), status, bucket.stochastic,
                                     stream)  # fmt: skip
            elif _stored_alike(bucket):  # the vectorised kernels: everything in the param's dtype
                ext.update(flags.rule, DTYPE_CODES[bucket.dtype], *tables, *chunks, *chunk_range,
                           plan.coef.data_ptr(), status, stream)  # fmt: skip
            else:  # master copy (fp32 or split), stochastic rounding, or grads/moments in another dtype
                ext.mixed_update(flags.rule, DTYPE_CODES[bucket.dtype], DTYPE_CODES[bucket.grad_dtype],
                                 DTYPE_CODES[bucket.state_dtype], *tables, *chunks, *chunk_range,
                                 plan.coef.data_ptr(), status, bucket.stochastic, stream)  # fmt: skip
    return norm
