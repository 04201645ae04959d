"""Every schedule of the library evaluated on the GPU (each backend's finalize kernel runs its
program from the device counter) against torch's real schedulers and HF's formulas."""

import math

import pytest
import torch
from test_schedule_library import BASE_LR, CASES, IDS, LONG

import fusedlr

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_applied_lr_on_cuda_matches_reference(kernel_backend, case):
    _, schedule, reference, horizon = case
    expected = reference(horizon)
    probe = torch.zeros(1, dtype=torch.float64, device="cuda", requires_grad=True)
    opt = fusedlr.Lion([probe], lr=BASE_LR, betas=(0.5, 0.5), schedule=schedule, backend=kernel_backend)
    trajectory = []
    for _ in range(horizon):
        probe.grad = torch.ones_like(probe)
        opt.step()
        trajectory.append(probe.detach().clone())
    values = [0.0] + torch.cat(trajectory).tolist()
    for k in range(horizon):
        applied = values[k] - values[k + 1]
        assert math.isclose(applied, expected[k], rel_tol=1e-9, abs_tol=1e-12), f"k={k}: {applied} != {expected[k]}"


@pytest.mark.parametrize("schedule, reference, horizon", LONG, ids=[repr(c[0])[:60] for c in LONG])
def test_device_program_at_every_step_of_long_horizons(schedule, reference, horizon):
    from fusedlr._triton import schedule_on_device

    expected = reference(horizon)
    scale, offset = schedule_on_device(schedule, torch.arange(horizon, device="cuda"))
    lrs = (BASE_LR * scale + offset).tolist()
    for k in range(horizon):
        assert math.isclose(lrs[k], expected[k], rel_tol=1e-8, abs_tol=1e-12), f"k={k}: {lrs[k]} != {expected[k]}"
