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
