"""The compiled extension without a GPU: it imports, agrees with the Python tables, its schedule
interpreter (the same source the device runs) agrees with the host evaluator on every schedule,
and its errors are clear. Set FUSEDLR_EXPECT_EXTENSION=1 (CI does, where nvcc exists) to make a
missing extension a failure instead of a skip."""

import os

import pytest
import torch
from test_schedule_library import BASE_LR, CASES, IDS

import fusedlr
from fusedlr import _cuda


@pytest.fixture(scope="module")
def ext():
    module = _cuda.load()
    if module is None:
        if os.environ.get("FUSEDLR_EXPECT_EXTENSION") == "1":
            pytest.fail("FUSEDLR_EXPECT_EXTENSION=1 but fusedlr._C is not built")
        pytest.skip("fusedlr._C is not built (FUSEDLR_BUILD_CUDA=1 pip install -e .)")
    return module


def test_layout_matches_the_python_tables(ext):
    assert ext.layout() == {**ext.layout(), **_cuda._expected_layout()}
    assert set(_cuda._expected_layout()) <= set(ext.layout())


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_cuda_schedule_interpreter_matches_the_host(ext, case):
    _, schedule, reference, horizon = case
    program = schedule.program
    flat = program.flat()
    expected = reference(horizon)
    for k in range(horizon):
        scale, offset = ext.schedule_on_cpu(flat, len(program.instructions), program.scale_register,
                                            program.offset_register, float(k))  # fmt: skip
        host = schedule.scale_offset(k)
        assert scale == pytest.approx(host[0], rel=1e-12, abs=1e-15), f"k={k}"
        assert offset == pytest.approx(host[1], rel=1e-12, abs=1e-15), f"k={k}"
        assert BASE_LR * scale + offset == pytest.approx(expected[k], rel=1e-9, abs=1e-12), f"k={k}"


def test_kernel_launch_without_a_gpu_raises_cuda_error_string(ext):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(RuntimeError, match="fusedlr CUDA error in finalize_kernel: .+"):
        ext.finalize(0, 1, 0, 1, 0, 0, 0, 0, 0, False, False, False, True, 0, 0, 0, 0, False, 0)


def test_unknown_dtype_code_is_refused(ext):
    with pytest.raises(ValueError, match="unknown dtype code 9"):
        ext.adamw_update(9, 0, 1, 0, 1, 0, 1, 65536, 0, 0, 0)


def test_cuda_backend_on_cpu_tensors_is_a_clear_error_before_any_change(ext):
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    opt = fusedlr.AdamW([p], backend="cuda")
    with pytest.raises(RuntimeError, match="backend='cuda' needs CUDA tensors"):
        opt.step()
    assert torch.equal(p.detach(), torch.ones(3)) and not opt.state


def test_available_backends_lists_cuda_only_with_a_gpu(ext):
    assert ("cuda" in fusedlr.available_backends()) == torch.cuda.is_available()
