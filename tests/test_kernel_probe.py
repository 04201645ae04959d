"""Whether the extension's kernels load on a GPU: a build that imports can still hold no SASS for
the GPU's architecture and PTX the driver cannot JIT-compile (a CUDA 13.1 build's PTX on a 13.0
driver). The GPU and the runtime's answer are faked here (no GPU); the real probe is run too, and
on a CPU machine it must report the missing driver without crashing or leaving an error behind."""

from __future__ import annotations

import contextlib
import types

import pytest
import torch

from fusedlr import _backends, _cuda

UNSUPPORTED_PTX = (222, "cudaErrorUnsupportedPtxVersion: the provided PTX was compiled with an unsupported toolchain.")


def test_the_real_probe_answers_for_this_machine(extension):
    module = extension
    archs = module.compiled_archs()
    assert archs and all(arch % 10 == 0 and 500 <= arch <= 1300 for arch in archs)
    first = module.probe_kernels()
    assert module.probe_kernels() == first  # nothing sticky left by a failed load
    error, message, binary, ptx = first
    if not torch.cuda.is_available():
        # cudart linked statically, no libcuda: "driver insufficient" (or "no device")
        assert error != 0 and message.startswith("cudaError") and binary == ptx == 0
        return
    assert (error, message) == (0, "")
    major, minor = torch.cuda.get_device_capability()
    if 10 * (10 * major + minor) in archs:  # SASS for this GPU: that is what the runtime loads
        assert binary == 10 * major + minor


@pytest.fixture
def gpu(monkeypatch):
    """An H100 on a driver for CUDA 13.0, torch's CUDA initialised, and an extension built with
    CUDA 13.1 for sm_80 whose probe answers ``set_probe(...)``; counts the probes."""
    calls = []
    answer = {"probe": (0, "", 90, 80)}

    def probe_kernels():
        calls.append(torch.cuda.current_device())
        return answer["probe"]

    extension = types.SimpleNamespace(
        __name__="fusedlr._C_cu13", layout=_cuda._expected_layout, cuda_runtime_version=lambda: 13010,
        compiled_archs=lambda: [800], probe_kernels=probe_kernels,
    )  # fmt: skip
    monkeypatch.setattr(_cuda, "_import", {13: extension}.get)
    monkeypatch.setattr(_cuda, "driver_cuda_version", lambda: (13, 0))
    current = {"device": 0}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current["device"])
    monkeypatch.setattr(torch.cuda, "device", lambda index: _on_device(current, index))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (9, 0))
    _cuda._choose.cache_clear()
    _cuda._kernel_load_answers.clear()

    def set_probe(result):
        answer["probe"] = result

    yield types.SimpleNamespace(set_probe=set_probe, calls=calls)
    _cuda._choose.cache_clear()
    _cuda._kernel_load_answers.clear()


@contextlib.contextmanager
def _on_device(current, index):
    before, current["device"] = current["device"], index
    try:
        yield
    finally:
        current["device"] = before


def test_kernels_that_load_make_cuda_available(gpu):
    assert _cuda.unavailable_reason() is None
    assert "cuda" in _backends.available_backends()
    assert _backends.choose("cuda", torch.device("cuda", 0)) == "cuda"
    assert _backends.choose("cuda", torch.device("cuda")) == "cuda"
    assert gpu.calls == [0]  # asked once per device


def test_kernels_that_cannot_load_fall_back_with_a_clear_error(gpu):
    gpu.set_probe((*UNSUPPORTED_PTX, 0, 0))
    with pytest.raises(RuntimeError) as raised:
        _backends.choose("cuda", torch.device("cuda", 1))
    message = str(raised.value)
    for part in (
        "backend='cuda' cannot run: its kernels cannot load on NVIDIA H100 80GB HBM3 (sm_90)",
        "this driver (CUDA 13.0)",
        UNSUPPORTED_PTX[1],
        "built with CUDA 13.1 for sm_80",
        "FUSEDLR_CUDA_ARCHS=90 with a toolkit no newer than CUDA 13.0",
        "backend='auto' uses triton",
    ):
        assert part in message
    assert gpu.calls == [1]  # on the params' device
    if _backends.triton_importable():
        assert _backends.choose("auto", torch.device("cuda", 1)) == "triton"


def test_available_backends_leave_out_a_cuda_that_cannot_load_here(gpu):
    gpu.set_probe((209, "cudaErrorNoKernelImageForDevice: no kernel image is available for execution", 0, 0))
    assert "cuda" not in _backends.available_backends()
    assert "cudaErrorNoKernelImageForDevice" in _cuda.unavailable_reason()


def test_no_probe_before_torch_initialises_cuda(gpu, monkeypatch):
    """available_backends() must not make a CUDA context (a forked DataLoader worker could not
    use CUDA after it): before torch has one, it answers from the driver check alone."""
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    gpu.set_probe((*UNSUPPORTED_PTX, 0, 0))
    assert "cuda" in _backends.available_backends()
    assert _cuda.unavailable_reason() is None
    assert gpu.calls == []


def test_a_transient_error_is_reported_as_it_is_and_asked_again(gpu):
    """Out of memory making the context (or a device held by another process) is no fault of the
    build: no rebuild advice, and the next step asks again rather than keep the answer."""
    gpu.set_probe((2, "cudaErrorMemoryAllocation: out of memory", 0, 0))
    with pytest.raises(RuntimeError, match="cudaErrorMemoryAllocation") as raised:
        _backends.choose("cuda", torch.device("cuda", 0))
    assert "Rebuild" not in str(raised.value)
    gpu.set_probe((0, "", 90, 80))
    assert _backends.choose("cuda", torch.device("cuda", 0)) == "cuda"
    assert _backends.choose("cuda", torch.device("cuda", 0)) == "cuda"
    assert gpu.calls == [0, 0]  # asked again after the error, then kept
