import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from fusedlr import _plan, available_backends  # noqa: E402


def _require(name):
    if name in available_backends():
        return name
    if name == "triton" and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        pytest.fail("TRITON_INTERPRET is set but the triton backend is unavailable: is triton installed?")
    pytest.skip(f"backend {name!r} needs a GPU here; run with TRITON_INTERPRET=1 (as `make test` does)")


def loaded_extension():
    """The compiled extension that loads here; the test is skipped where none does (a failure
    when FUSEDLR_EXPECT_EXTENSION=1 says one was built)."""
    from fusedlr import _cuda

    module = _cuda.load()
    if module is None:
        if os.environ.get("FUSEDLR_EXPECT_EXTENSION") == "1":
            pytest.fail(f"FUSEDLR_EXPECT_EXTENSION=1 but no extension loads: {_cuda.unavailable_reason()}")
        pytest.skip(f"no extension loads: {_cuda.unavailable_reason()}")
    return module


@pytest.fixture(scope="session")
def extension():
    """``loaded_extension()`` as a fixture."""
    return loaded_extension()


def cuda_on_host(request) -> str:
    """``backend="cuda"`` on CPU tensors: fusedlr/_cuda.py's launcher driving the extension's host
    twins (``_C.host``: the kernels' element, lane and finalize code compiled for the host, over
    the same tables and chunks). Skipped where the extension is not built (a failure when
    FUSEDLR_EXPECT_EXTENSION=1 says it was)."""
    from fusedlr import _backends, _cuda

    module = loaded_extension()
    choose = _backends.choose
    patch = pytest.MonkeyPatch()  # its own: a test's monkeypatch.undo() keeps these
    request.addfinalizer(patch.undo)
    patch.setattr(_cuda, "load", lambda: module.host)
    patch.setattr(_backends, "choose", lambda name, device: "cuda" if name == "cuda" else choose(name, device))
    return "cuda"


@pytest.fixture(params=["torch", "cpu", "triton", "cuda-host"])
def backend(request):
    """Every backend that runs on CPU tensors: torch and cpu always, triton under its interpreter,
    and cuda through the extension's host twins (``cuda_on_host``)."""
    if request.param == "cuda-host":
        return cuda_on_host(request)
    return _require(request.param)


@pytest.fixture(params=["triton", "cuda-host"])
def kernel_backend(request):
    """The kernel backends on CPU tensors: triton under its interpreter, cuda's host twins."""
    if request.param == "cuda-host":
        return cuda_on_host(request)
    return _require(request.param)


@pytest.fixture
def triton_backend():
    return _require("triton")


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Chunks of 1,024 elements, so that small CPU tensors already span many chunks."""
    monkeypatch.setattr(_plan, "CHUNK_SIZE", 1024)
