import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    raise pytest.UsageError("tests/gpu compile real kernels: run them without TRITON_INTERPRET")


def pytest_collection_modifyitems(config, items):
    # A session-wide hook: it sees tests/compiled too, which need no GPU. Only `gpu` tests skip.
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the device machine)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def small_chunks():
    """GPU tests keep the real 65,536-element chunks (overrides tests/conftest.py)."""


@pytest.fixture(params=["triton", "cuda"])
def kernel_backend(request):
    """Both kernel backends; "cuda" needs the compiled extension (a failure, not a skip, when
    FUSEDLR_EXPECT_EXTENSION=1 says it was built)."""
    import fusedlr

    if request.param == "cuda" and "cuda" not in fusedlr.available_backends():
        if os.environ.get("FUSEDLR_EXPECT_EXTENSION") == "1":
            pytest.fail(f"FUSEDLR_EXPECT_EXTENSION=1 but the cuda backend is unavailable: {_cuda_reason()}")
        pytest.skip(f"the cuda backend is unavailable: {_cuda_reason()}")
    return request.param


def _cuda_reason() -> str:
    from fusedlr import _cuda

    return _cuda.unavailable_reason() or "the extension loads, but the cuda backend is not listed here"
