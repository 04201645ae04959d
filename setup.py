"""Build script. Pure Python today: the compiled CUDA backend (csrc/) plugs in here.

When csrc/ exists, `cuda_extensions()` is where its nvcc build goes; without it nothing is
compiled and the wheel holds the torch and Triton backends only.
"""

from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent


def cuda_extensions():
    """The compiled extension modules; none until csrc/ holds the CUDA backend."""
    if not (ROOT / "csrc").is_dir():
        return []
    raise NotImplementedError("csrc/ exists but its build is not wired into setup.py yet")


setup(ext_modules=cuda_extensions())
