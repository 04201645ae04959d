"""Which compiled extension loads for which NVIDIA driver, with the driver query faked (no GPU
here): the newest built CUDA major the driver supports; none, with a clear error for
backend="cuda" and triton kept for "auto", when the driver is older than every build."""

from __future__ import annotations

import ctypes
import types

import pytest
import torch

from fusedlr import _backends, _cuda


def _fake_extension(major):
    return types.SimpleNamespace(__name__=f"fusedlr._C_cu{major}", layout=_cuda._expected_layout)


@pytest.fixture
def world(monkeypatch):
    """Set the built extensions and the driver's CUDA version; the choice is made afresh."""

    def set_world(built_majors, driver):
        modules = {major: _fake_extension(major) for major in built_majors}
        monkeypatch.setattr(_cuda, "_import", modules.get)
        monkeypatch.setattr(_cuda, "driver_cuda_version", lambda: driver)
        _cuda._choose.cache_clear()
        return modules

    yield set_world
    _cuda._choose.cache_clear()


@pytest.mark.parametrize(
    "built,driver,expected",
    [
        ((12, 13), (13, 0), 13),
        ((12, 13), (12, 4), 12),  # a CUDA 12 driver (550) with a wheel holding both builds
        ((12, 13), (12, 0), 12),  # minor version compatibility: any 12.x driver runs a 12.x build
        ((12,), (13, 1), 12),  # a newer driver runs an older build
        ((12, 13), None, 13),  # no driver (CPU machine): the newest, for its host-side code
    ],
)
def test_newest_build_the_driver_supports(world, built, driver, expected):
    modules = world(built, driver)
    assert _cuda.load() is modules[expected]
    assert _cuda.unavailable_reason() is None


def test_driver_too_old_falls_back_with_a_clear_error(world):
    world((13,), (12, 4))
    assert _cuda.load() is None
    reason = _cuda.unavailable_reason()
    assert "supports CUDA 12.4" in reason and "CUDA 13" in reason and "580" in reason
    with pytest.raises(RuntimeError, match="backend='cuda' cannot run: this NVIDIA driver supports CUDA 12.4"):
        _backends.choose("cuda", torch.device("cuda"))
    if _backends.triton_importable():
        assert _backends.choose("auto", torch.device("cuda")) == "triton"
    assert "cuda" not in _backends.available_backends()


@pytest.mark.parametrize(
    "built,driver,fix",
    [
        ((13,), (12, 4), "build fusedlr with a CUDA 12 toolkit"),  # a build for this driver exists
        ((12, 13), (11, 8), "Update the driver (fusedlr's cuda backend needs CUDA 12 or newer)"),  # none can
    ],
)
def test_the_fix_named_is_one_that_works(world, built, driver, fix):
    world(built, driver)
    assert fix in _cuda.unavailable_reason()


def test_nothing_built_says_how_to_build(world):
    world((), (13, 0))
    assert _cuda.load() is None
    with pytest.raises(RuntimeError, match="not installed: build it with FUSEDLR_BUILD_CUDA=1"):
        _backends.choose("cuda", torch.device("cuda"))


def test_driver_query_without_libcuda_is_none(monkeypatch):
    def no_libcuda(name, *args, **kwargs):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", no_libcuda)
    _cuda.driver_cuda_version.cache_clear()
    try:
        assert _cuda.driver_cuda_version() is None
    finally:
        _cuda.driver_cuda_version.cache_clear()


def test_driver_query_reads_cu_driver_get_version(monkeypatch):
    class FakeLibcuda:
        @staticmethod
        def cuDriverGetVersion(out):
            ctypes.cast(out, ctypes.POINTER(ctypes.c_int))[0] = 12040
            return 0

    monkeypatch.setattr(ctypes, "CDLL", lambda name, *a, **k: FakeLibcuda())
    _cuda.driver_cuda_version.cache_clear()
    try:
        assert _cuda.driver_cuda_version() == (12, 4)
    finally:
        _cuda.driver_cuda_version.cache_clear()


def test_a_built_extension_reports_its_toolkit():
    module = _cuda.load()
    if module is None:
        pytest.skip("no extension built here")
    major = int(module.__name__.rsplit("_cu", 1)[1])
    assert module.cuda_runtime_version() // 1000 == major
