"""The applied lr made public: the torch-ops evaluator of schedule programs against the host
evaluator for every schedule in the library, and ``current_lr()`` / ``next_lr()`` /
``AppliedLRScheduler`` against the lr each update really applied (recovered from a probe)."""

import math
import os
import warnings

import pytest
import torch
from test_schedule_library import CASES, IDS

import fusedlr
from fusedlr import schedules as S
from fusedlr.schedules.device import run_on_device
from fusedlr.schedules.program import run_on_host

EXTRA = [  # beyond the library cases: absolute offsets, constant folding, pow edge cases
    S.Constant(),
    S.CosineAnnealing(7, eta_min=0.02),
    S.Exponential(0.5),  # 0.5 ** k underflows to 0 far out
    S.Polynomial(10, 0.5),
    S.WarmupCosineLrRate(4, 30, min_lr_ratio=0.1),
    S.WarmupCosineLrRate(4, 30, num_cycles=1.0, warmup_lr_ratio=0.2),
]


def _same(device_value: float, host_value: float) -> bool:
    if math.isnan(host_value):
        return math.isnan(device_value)
    return device_value == host_value or math.isclose(device_value, host_value, rel_tol=4e-16, abs_tol=0.0)


@pytest.mark.parametrize("schedule", [c[1] for c in CASES] + EXTRA, ids=IDS + [repr(s)[:40] for s in EXTRA])
def test_device_evaluator_matches_host(schedule):
    ks = torch.arange(0, 1200, dtype=torch.int64)
    scale, offset = run_on_device(schedule.program, ks)
    assert scale.dtype == offset.dtype == torch.float64 and scale.shape == ks.shape
    for k in list(range(120)) + list(range(120, 1200, 37)):
        host_scale, host_offset = run_on_host(schedule.program, k)
        assert _same(float(scale[k]), host_scale), (k, float(scale[k]), host_scale)
        assert _same(float(offset[k]), host_offset), (k, float(offset[k]), host_offset)


def test_device_evaluator_on_a_0_dim_counter():
    schedule = S.WarmupCosine(3, 10)
    scale, offset = run_on_device(schedule.program, torch.tensor(4, dtype=torch.int64))
    assert scale.shape == () and float(scale) == schedule(4) and float(offset) == 0.0


def _probe_run(backend, schedule, steps, skip_at=(), make_opt=None):
    """A float64 Lion probe with grad 1 and no decay moves by exactly -lr at each applied update.
    Returns (applied lrs, current_lr after each step, next_lr after each step)."""
    probe = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = fusedlr.Lion([probe], lr=0.1, betas=(0.5, 0.5), schedule=schedule, backend=backend, skip_nonfinite=True)
    applied, current, upcoming = [], [], []
    before = opt.current_lr()[0]
    assert before.dtype == torch.float64 and before.shape == ()
    previous = 0.0
    for step in range(steps):
        probe.grad = torch.full_like(probe, math.inf if step in skip_at else 1.0)
        opt.step()
        now = float(probe.detach())
        applied.append(previous - now)
        previous = now
        current.append(float(opt.current_lr()[0]))
        upcoming.append(float(opt.next_lr()[0]))
    return applied, current, upcoming, float(before)


@pytest.mark.parametrize(
    "schedule",
    [S.WarmupCosine(3, 12), S.CosineAnnealing(5, eta_min=0.01), lambda k: 0.9**k, None],
    ids=["relative", "absolute", "callable", "none"],
)
def test_current_lr_is_the_applied_lr(backend, schedule):
    applied, current, upcoming, before = _probe_run(backend, schedule, 10)
    lr_of = (lambda k: 0.1) if schedule is None else getattr(schedule, "lr", None) or (lambda k, b: b * schedule(k))
    expected = [lr_of(k, 0.1) if schedule is not None else 0.1 for k in range(11)]
    assert before == pytest.approx(expected[0], rel=1e-15, abs=0)
    for k in range(10):
        assert applied[k] == pytest.approx(expected[k], rel=1e-12, abs=1e-15)
        assert current[k] == pytest.approx(applied[k], rel=1e-12, abs=1e-15)
        assert upcoming[k] == pytest.approx(expected[k + 1], rel=1e-15, abs=0)


def test_a_skipped_step_leaves_current_lr_on_the_last_applied_update(backend):
    """Steps 2 and 3 are skipped on the device (non-finite grads): the counter stays, so the
    lr shown is still update 1's, and update 2 happens at step 4 with k = 2."""
    schedule = S.WarmupLinear(2, 10)
    applied, current, upcoming, _ = _probe_run(backend, schedule, 6, skip_at=(2, 3))
    ks = [0, 1, 1, 1, 2, 3]  # the last applied update's index after each step
    for step, k in enumerate(ks):
        assert current[step] == pytest.approx(schedule.lr(k, 0.1), rel=1e-15, abs=0), step
        assert upcoming[step] == pytest.approx(schedule.lr(k + 1, 0.1), rel=1e-15, abs=0), step
    assert applied[2] == 0.0 and applied[3] == 0.0
    assert applied[4] == pytest.approx(schedule.lr(2, 0.1), rel=1e-12)


def test_current_lr_per_group_from_each_base_lr(backend):
    a = torch.nn.Parameter(torch.ones(3))
    b = torch.nn.Parameter(torch.ones(2))
    schedule = S.CosineAnnealing(6, eta_min=1e-3)  # an absolute floor: lr = base * scale + offset
    opt = fusedlr.AdamW([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1, schedule=schedule, backend=backend)
    for _ in range(3):
        a.grad, b.grad = torch.ones(3), torch.ones(2)
        opt.step()
    lrs = [float(x) for x in opt.current_lr()]
    assert lrs == pytest.approx([schedule.lr(2, 0.1), schedule.lr(2, 0.5)], rel=1e-15)


def test_applied_lr_scheduler_reports_without_scheduling():
    p = torch.nn.Parameter(torch.ones(4))
    schedule = S.WarmupLinear(2, 8)
    opt = fusedlr.AdamW([p], lr=0.01, schedule=schedule)
    scheduler = fusedlr.AppliedLRScheduler(opt)
    assert isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler)
    assert "initial_lr" not in opt.param_groups[0]
    for k in range(4):
        p.grad = torch.ones(4)
        opt.step()
        scheduler.step()
        assert opt.param_groups[0]["lr"] == 0.01  # the base lr is never rewritten
        assert float(scheduler.get_last_lr()[0]) == schedule.lr(k, 0.01)
    state = scheduler.state_dict()
    fresh = fusedlr.AppliedLRScheduler(opt)
    fresh.load_state_dict(state)
    fresh.load_state_dict({"base_lrs": [0.01], "last_epoch": 4, "lr_lambdas": [None]})  # a LambdaLR's: ignored
    assert float(fresh.get_last_lr()[0]) == schedule.lr(3, 0.01)
    with pytest.raises(TypeError, match="fusedlr optimizer"):
        fusedlr.AppliedLRScheduler(torch.optim.AdamW([p]))


def test_a_torch_scheduler_stacked_on_a_fusedlr_schedule_warns():
    p = torch.nn.Parameter(torch.ones(2))
    opt = fusedlr.AdamW([p], lr=0.01, schedule=S.WarmupLinear(2, 8))
    torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0)
    p.grad = torch.ones(2)
    with pytest.warns(UserWarning, match="both apply"):
        opt.step()
    plain = fusedlr.AdamW([p], lr=0.01, schedule=S.WarmupLinear(2, 8))
    fusedlr.AppliedLRScheduler(plain)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        plain.step()  # the stand-in schedules nothing: no warning


def test_import_fusedlr_imports_no_trainer():
    import subprocess
    import sys

    code = (
        "import sys, fusedlr, fusedlr.integrations; "
        "print(sorted(m for m in ('transformers', 'lightning', 'accelerate', 'pytorch_lightning') if m in sys.modules))"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root).stdout
    assert out.strip() == "[]"
