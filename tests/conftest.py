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


@pytest.fixture(params=["torch", "cpu", "triton"])
def backend(request):
    """Every backend that runs on CPU tensors: torch and cpu always, triton under its interpreter."""
    return _require(request.param)


@pytest.fixture
def triton_backend():
    return _require("triton")


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Chunks of 1,024 elements, so that small CPU tensors already span many chunks."""
    monkeypatch.setattr(_plan, "CHUNK_SIZE", 1024)
