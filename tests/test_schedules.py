"""The optimizer's schedule plumbing: host callables, torch's LR schedulers on top, immutability.
(The schedule library itself is tested in test_schedule_library.py.)"""

import pytest
import torch
from oracles import hf_constant_with_warmup, hf_cosine, hf_cosine_with_min_lr, hf_inverse_sqrt, hf_linear

import fusedlr
from fusedlr import schedules

PAIRS = [
    (schedules.Constant(), lambda k: 1.0),
    (schedules.WarmupConstant(10), hf_constant_with_warmup(10)),
    (schedules.WarmupConstant(0), hf_constant_with_warmup(0)),
    (schedules.WarmupLinear(10, 50), hf_linear(10, 50)),
    (schedules.WarmupLinear(0, 1), hf_linear(0, 1)),
    (schedules.WarmupCosine(10, 50), hf_cosine(10, 50)),
    (schedules.WarmupCosine(5, 40, num_cycles=2.0), hf_cosine(5, 40, 2.0)),
    (schedules.WarmupCosine(10, 50, min_lr_ratio=0.1), hf_cosine_with_min_lr(10, 50, min_lr_rate=0.1)),
    (schedules.WarmupCosine(0, 30, num_cycles=0.25, min_lr_ratio=0.3), hf_cosine_with_min_lr(0, 30, 0.25, 0.3)),
    (schedules.InverseSqrt(8), hf_inverse_sqrt(8)),
    (schedules.InverseSqrt(0), hf_inverse_sqrt(0)),
    (schedules.InverseSqrt(8, timescale=3), hf_inverse_sqrt(8, 3)),
]
IDS = [repr(s) for s, _ in PAIRS]
HORIZON = 70  # past every total_steps above by at least 20


@pytest.mark.parametrize("schedule, reference", PAIRS, ids=IDS)
def test_host_mirror_matches_hugging_face(schedule, reference):
    for k in range(HORIZON):
        assert schedule(k) == reference(k), f"k={k}"


def test_host_callable_schedule(backend):
    probe = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = fusedlr.Lion([probe], lr=2.0, schedule=lambda k: 0.5**k, backend=backend)
    for k in range(6):
        before = float(probe.detach())
        probe.grad = torch.ones_like(probe)
        opt.step()
        assert before - float(probe.detach()) == pytest.approx(2.0 * 0.5**k, rel=1e-12)


def test_torch_lr_scheduler_on_top_of_fusedlr(backend):
    """torch's schedulers write group['lr']; fusedlr reads it every step."""
    probe = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = fusedlr.Lion([probe], lr=1.0, backend=backend)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)
    applied = []
    for _ in range(6):
        before = float(probe.detach())
        probe.grad = torch.ones_like(probe)
        opt.step()
        sched.step()
        applied.append(before - float(probe.detach()))
    assert applied == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01, 0.01], rel=1e-12)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: schedules.WarmupConstant(-1), "warmup_steps"),
        (lambda: schedules.WarmupConstant(2.5), "warmup_steps"),
        (lambda: schedules.WarmupLinear(10, 5), "total_steps"),
        (lambda: schedules.WarmupCosine(10, 5), "total_steps"),
        (lambda: schedules.WarmupCosine(1, 5, num_cycles=-1.0), "num_cycles"),
        (lambda: schedules.WarmupCosine(1, 5, min_lr_ratio=1.5), "min_lr_ratio"),
        (lambda: schedules.InverseSqrt(5, timescale=0), "timescale"),
    ],
)
def test_invalid_schedule_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_schedules_are_immutable():
    s = schedules.WarmupCosine(1, 10)
    with pytest.raises(AttributeError):
        s.total_steps = 5
