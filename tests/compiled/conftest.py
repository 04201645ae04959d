import os

import pytest

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    raise pytest.UsageError("tests/compiled compiles real kernels: run them without TRITON_INTERPRET")


@pytest.fixture(autouse=True)
def small_chunks():
    """The real chunk size (overrides tests/conftest.py)."""
