"""Every schedule of the library evaluated on the GPU (each backend's finalize kernel runs its
program from the device counter) against torch's real schedulers and HF's formulas."""

import math

import pytest
import torch
from test_schedule_library import BASE_LR, CASES, IDS

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
