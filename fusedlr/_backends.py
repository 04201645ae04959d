"""Backend names, availability and the choice made for ``backend="auto"``."""

from __future__ import annotations

import functools
import os

import torch

BACKEND_NAMES = ("auto", "torch", "cpu", "triton", "cuda")
ENV_OVERRIDE = "FUSEDLR_BACKEND"


def interpreting_triton() -> bool:
    """True when Triton kernels run in its CPU interpreter (how CI tests them)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.cache
def triton_importable() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:
        return False
    return True


def available_backends() -> list[str]:
    """The backends that can run on this machine now."""
    names = ["torch", "cpu"]
    if triton_importable() and (torch.cuda.is_available() or interpreting_triton()):
        names.append("triton")
    from . import _cuda

    if _cuda.available():
        names.append("cuda")
    return names


def check_backend_name(name) -> None:
    if name not in BACKEND_NAMES:
        valid = ", ".join(repr(n) for n in BACKEND_NAMES)
        raise ValueError(f"Invalid backend: {name!r} (valid backends: {valid})")


def choose(requested: str, device: torch.device) -> str:
    """The concrete backend for tensors on ``device``; raises RuntimeError if it cannot run."""
    name = requested
    if name == "auto":
        override = os.environ.get(ENV_OVERRIDE)
        if override:
            if override not in BACKEND_NAMES:
                valid = ", ".join(repr(n) for n in BACKEND_NAMES)
                raise ValueError(f"Invalid {ENV_OVERRIDE}={override!r} (valid backends: {valid})")
            name = override
    if name == "auto":
        if device.type == "cuda" and triton_importable():
            return "triton"
        # CPU tensors: torch's fused and foreach CPU kernels (_cpu.py); elsewhere the reference.
        return "cpu" if device.type == "cpu" else "torch"
    if name == "cpu" and device.type != "cpu":
        raise RuntimeError(
            f"fusedlr: backend='cpu' needs CPU tensors; these parameters are on {device.type} (use backend='auto')"
        )
    if name == "triton":
        if not triton_importable():
            raise RuntimeError("fusedlr: backend='triton' requested but triton cannot be imported")
        if device.type == "cpu" and not interpreting_triton():
            raise RuntimeError(
                "fusedlr: backend='triton' needs CUDA tensors; these parameters are on the CPU. "
                "Use backend='cpu' (or 'auto'), or set TRITON_INTERPRET=1 to run the kernels "
                "in Triton's interpreter."
            )
        if device.type not in ("cpu", "cuda"):
            raise RuntimeError(f"fusedlr: backend='triton' cannot run on {device.type} tensors")
    if name == "cuda":
        from . import _cuda

        if _cuda.load() is None:
            raise RuntimeError(f"fusedlr: backend='cuda' cannot run: {_cuda.unavailable_reason()}")
        if device.type != "cuda":
            raise RuntimeError(f"fusedlr: backend='cuda' needs CUDA tensors; these parameters are on {device.type}")
        problem = _cuda.kernel_load_problem(device)
        if problem is not None:
            raise RuntimeError(f"fusedlr: backend='cuda' cannot run: {problem}")
    return name
