"""The schedule library against torch's real schedulers and Hugging Face's formulas.

Two checks for every schedule: the host evaluator at every step of a long horizon (past the
end by at least 20 steps), and the learning rate the optimizer actually applied, recovered
from a probe parameter, on each backend (the Triton run evaluates the schedule program on the
device from the device counter).
"""

import math
import subprocess
import sys

import pytest
import torch
from oracles import (
    deepseek_multistep,
    hf_constant_with_warmup,
    hf_cosine,
    hf_cosine_hard_restarts,
    hf_cosine_with_min_lr,
    hf_cosine_with_min_lr_rate,
    hf_inverse_sqrt,
    hf_linear,
    hf_polynomial,
    hf_wsd,
    minicpm_exp_wsd,
    torch_scheduler_lrs,
)

import fusedlr
from fusedlr import schedules as S

L = torch.optim.lr_scheduler
BASE_LR = 0.1


def hf(f):
    """Reference lrs from a Hugging Face multiplier, as LambdaLR applies it."""
    return lambda steps: [BASE_LR * f(k) for k in range(steps)]


def torch_ref(make):
    return lambda steps: torch_scheduler_lrs(make, steps, BASE_LR)


# (id, schedule, reference(steps) -> lrs, horizon): small enough for the Triton interpreter.
CASES = [
    ("hf-constant-warmup", S.WarmupConstant(5), hf(hf_constant_with_warmup(5)), 30),
    ("hf-linear", S.WarmupLinear(5, 40), hf(hf_linear(5, 40)), 62),
    ("hf-cosine", S.WarmupCosine(5, 40), hf(hf_cosine(5, 40)), 62),
    ("hf-cosine-1.5-cycles", S.WarmupCosine(4, 30, num_cycles=1.5), hf(hf_cosine(4, 30, 1.5)), 52),
    ("hf-cosine-min-lr", S.WarmupCosine(5, 40, min_lr_ratio=0.1), hf(hf_cosine_with_min_lr(5, 40, 0.5, 0.1)), 62),
    (
        "hf-cosine-lr-rate",
        S.WarmupCosineLrRate(5, 40, min_lr_ratio=0.1),
        hf(hf_cosine_with_min_lr_rate(5, 40, 0.5, 0.1)),
        62,
    ),
    (
        "hf-cosine-lr-rate-warmup-rate",
        S.WarmupCosineLrRate(6, 30, num_cycles=1.0, warmup_lr_ratio=0.2),
        hf(hf_cosine_with_min_lr_rate(6, 30, 1.0, 0.0, 0.2)),
        52,
    ),
    ("hf-hard-restarts", S.WarmupCosineHardRestarts(5, 40, 3), hf(hf_cosine_hard_restarts(5, 40, 3)), 62),
    (
        "hf-polynomial",
        S.WarmupPolynomial(5, 40, lr_init=BASE_LR, lr_end=1e-4, power=2.0),
        hf(hf_polynomial(5, 40, BASE_LR, 1e-4, 2.0)),
        62,
    ),
    ("hf-inverse-sqrt", S.InverseSqrt(6), hf(hf_inverse_sqrt(6)), 40),
    ("hf-inverse-sqrt-timescale", S.InverseSqrt(0, timescale=7), hf(hf_inverse_sqrt(0, 7)), 30),
    (
        "hf-wsd-linear-cosine",
        S.WarmupStableDecay(5, 15, stable_steps=10, min_lr_ratio=0.05),
        hf(hf_wsd(5, 10, 15, min_lr_ratio=0.05)),
        52,
    ),
    (
        "hf-wsd-cosine-1sqrt",
        S.WarmupStableDecay(6, 12, total_steps=30, warmup_type="cosine", decay_type="1-sqrt"),
        hf(hf_wsd(6, 12, 12, "cosine", "1-sqrt")),
        52,
    ),
    ("torch-step", S.Step(7, 0.5), torch_ref(lambda o: L.StepLR(o, 7, 0.5)), 50),
    ("torch-multistep", S.MultiStep([10, 25, 40], 0.3), torch_ref(lambda o: L.MultiStepLR(o, [10, 25, 40], 0.3)), 60),
    ("torch-exponential", S.Exponential(0.93), torch_ref(lambda o: L.ExponentialLR(o, 0.93)), 60),
    ("torch-linear", S.Linear(0.25, 0.9, 20), torch_ref(lambda o: L.LinearLR(o, 0.25, 0.9, 20)), 42),
    ("torch-constant", S.ConstantFactor(0.4, 12), torch_ref(lambda o: L.ConstantLR(o, 0.4, 12)), 34),
    ("torch-polynomial", S.Polynomial(30, 2.0), torch_ref(lambda o: L.PolynomialLR(o, 30, 2.0)), 52),
    ("torch-cosine", S.CosineAnnealing(25, 0.01), torch_ref(lambda o: L.CosineAnnealingLR(o, 25, 0.01)), 80),
    ("torch-restarts", S.CosineRestarts(10), torch_ref(lambda o: L.CosineAnnealingWarmRestarts(o, 10)), 45),
    (
        "torch-restarts-mult",
        S.CosineRestarts(3, 2, 0.005),  # restarts at 3, 9, 21, 45
        torch_ref(lambda o: L.CosineAnnealingWarmRestarts(o, 3, 2, 0.005)),
        50,
    ),
    *[
        (
            f"torch-cyclic-{mode}",
            S.Cyclic(0.01, 0.1, 6, 4, mode=mode, gamma=0.97),
            torch_ref(lambda o, mode=mode: L.CyclicLR(o, 0.01, 0.1, 6, 4, mode=mode, gamma=0.97, cycle_momentum=False)),
            45,
        )
        for mode in ("triangular", "triangular2", "exp_range")
    ],
    *[
        (
            f"torch-onecycle-{strategy}-{'3' if three else '2'}phase",
            S.OneCycle(1.0, 50, pct_start=0.25, anneal_strategy=strategy, three_phase=three),
            torch_ref(
                lambda o, s=strategy, t=three: L.OneCycleLR(
                    o, 1.0, total_steps=50, pct_start=0.25, anneal_strategy=s, three_phase=t, cycle_momentum=False
                )
            ),
            51,  # torch refuses to step further
        )
        for strategy in ("cos", "linear")
        for three in (False, True)
    ],
    ("minicpm-exp-wsd", S.WarmupStableExpDecay(5, 10, 8.0, 0.05), hf(minicpm_exp_wsd(5, 10, 8.0, 0.05)), 70),
    ("deepseek-multistep", S.WarmupMultiStep.deepseek(5, 50), hf(deepseek_multistep(5, 50)), 70),
    (
        "sequential-linear-cosine",
        S.Sequential([S.Linear(0.1, 1.0, 10), S.CosineAnnealing(30, 0.001)], [10]),
        torch_ref(lambda o: L.SequentialLR(o, [L.LinearLR(o, 0.1, 1.0, 10), L.CosineAnnealingLR(o, 30, 0.001)], [10])),
        60,
    ),
    (
        "sequential-three",
        S.Sequential([S.ConstantFactor(0.5, 5), S.Exponential(0.9), S.Step(5, 0.5)], [8, 20]),
        torch_ref(
            lambda o: L.SequentialLR(
                o, [L.ConstantLR(o, 0.5, 5), L.ExponentialLR(o, 0.9), L.StepLR(o, 5, 0.5)], [8, 20]
            )
        ),
        45,
    ),
    (
        "chained",
        S.Chained([S.Exponential(0.95), S.Step(10, 0.5), S.ConstantFactor(0.5, 4)]),
        torch_ref(
            lambda o: L.ChainedScheduler([L.ExponentialLR(o, 0.95), L.StepLR(o, 10, 0.5), L.ConstantLR(o, 0.5, 4)])
        ),
        45,
    ),
    (
        "rewarm",  # continued pretraining: a second warmup-cosine from update 40, counted from 0
        S.Sequential([S.WarmupCosine(5, 40), S.WarmupCosine(3, 20)], [40]),
        hf(lambda k: hf_cosine(5, 40)(k) if k < 40 else hf_cosine(3, 20)(k - 40)),
        70,
    ),
    (
        "nested",
        S.Sequential(
            [
                S.Chained([S.Linear(0.2, 1.0, 6), S.Exponential(0.97)]),
                S.Sequential([S.Constant(), S.WarmupLinear(2, 12)], [5]),
            ],
            [15],
        ),  # fmt: skip
        hf(
            lambda k: (
                (min(1.0, 0.2 + 0.8 * min(6, k) / 6) * 0.97**k)
                if k < 15
                else (1.0 if k - 15 < 5 else hf_linear(2, 12)(k - 20))
            )
        ),
        45,
    ),
]
IDS = [c[0] for c in CASES]


def _close(actual, expected, k, rel=1e-9):
    assert math.isclose(actual, expected, rel_tol=rel, abs_tol=1e-12), f"k={k}: {actual!r} != {expected!r}"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_host_matches_reference(case):
    _, schedule, reference, horizon = case
    expected = reference(horizon)
    for k in range(horizon):
        _close(schedule.lr(k, BASE_LR), expected[k], k)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_applied_lr_matches_reference(backend, case):
    """A float64 Lion probe with grad 1 and no decay moves by exactly -lr_k at update k."""
    _, schedule, reference, horizon = case
    expected = reference(horizon)
    probe = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = fusedlr.Lion([probe], lr=BASE_LR, betas=(0.5, 0.5), schedule=schedule, backend=backend)
    previous = 0.0
    for k in range(horizon):
        probe.grad = torch.ones_like(probe)
        opt.step()
        now = float(probe.detach())
        _close(previous - now, expected[k], k)
        previous = now


# Long horizons on the host: thousands of steps, past the end by 20 or more.
LONG = [
    (S.WarmupCosine(200, 3000, min_lr_ratio=0.1), hf(hf_cosine_with_min_lr(200, 3000, 0.5, 0.1)), 3020),
    (S.WarmupLinear(100, 2500), hf(hf_linear(100, 2500)), 2520),
    (S.WarmupCosineHardRestarts(100, 2000, 4), hf(hf_cosine_hard_restarts(100, 2000, 4)), 2020),
    (S.WarmupPolynomial(50, 2000, BASE_LR, 1e-5, 0.5), hf(hf_polynomial(50, 2000, BASE_LR, 1e-5, 0.5)), 2020),
    (S.InverseSqrt(300), hf(hf_inverse_sqrt(300)), 3000),
    *[
        (
            S.WarmupStableDecay(100, 600, total_steps=2000, warmup_type=w, decay_type=d, min_lr_ratio=0.02),
            hf(hf_wsd(100, 1300, 600, w, d, 0.02)),
            2020,
        )  # fmt: skip
        for w in ("linear", "cosine", "1-sqrt")
        for d in ("linear", "cosine", "1-sqrt")
    ],
    (S.CosineAnnealing(700, 1e-4), torch_ref(lambda o: L.CosineAnnealingLR(o, 700, 1e-4)), 2100),
    (S.CosineRestarts(50, 3, 1e-4), torch_ref(lambda o: L.CosineAnnealingWarmRestarts(o, 50, 3, 1e-4)), 3000),
    (S.Exponential(0.999), torch_ref(lambda o: L.ExponentialLR(o, 0.999)), 3000),
    (S.MultiStep([500, 1000, 1500], 0.5), torch_ref(lambda o: L.MultiStepLR(o, [500, 1000, 1500], 0.5)), 2000),
    (S.Polynomial(1500, 0.7), torch_ref(lambda o: L.PolynomialLR(o, 1500, 0.7)), 1600),
    (
        S.Cyclic(1e-3, 1e-1, 300, 200, mode="exp_range", gamma=0.999),
        torch_ref(lambda o: L.CyclicLR(o, 1e-3, 1e-1, 300, 200, mode="exp_range", gamma=0.999, cycle_momentum=False)),
        3000,
    ),  # fmt: skip
    (
        S.OneCycle(0.3, 2000, three_phase=True),
        torch_ref(lambda o: L.OneCycleLR(o, 0.3, total_steps=2000, three_phase=True, cycle_momentum=False)),
        2001,
    ),  # fmt: skip
]


@pytest.mark.parametrize("schedule, reference, horizon", LONG, ids=[repr(c[0])[:60] for c in LONG])
def test_host_matches_reference_over_long_horizons(schedule, reference, horizon):
    expected = reference(horizon)
    for k in range(horizon):
        _close(schedule.lr(k, BASE_LR), expected[k], k, rel=1e-8)


@pytest.mark.parametrize("schedule, reference, horizon", LONG, ids=[repr(c[0])[:60] for c in LONG])
def test_device_program_over_long_horizons(triton_backend, schedule, reference, horizon):
    """The device evaluator at 24 updates spread over each long horizon, ends and boundaries included."""
    from fusedlr._triton import schedule_on_device

    expected = reference(horizon)
    ks = sorted({0, 1, horizon - 21, horizon - 1, *range(0, horizon, max(1, horizon // 20))})
    scale, offset = schedule_on_device(schedule, torch.tensor(ks, dtype=torch.int64))
    for k, s, o in zip(ks, scale.tolist(), offset.tolist()):
        _close(BASE_LR * s + o, expected[k], k, rel=1e-8)


def test_relative_schedules_work_under_lambda_lr():
    schedule = S.WarmupCosine(3, 20)
    lrs = torch_scheduler_lrs(lambda o: L.LambdaLR(o, schedule), 25)
    assert lrs == [BASE_LR * hf_cosine(3, 20)(k) for k in range(25)]


def test_absolute_schedules_have_no_multiplier():
    with pytest.raises(ValueError, match="absolute learning rates"):
        S.CosineAnnealing(10, eta_min=0.01)(3)
    assert S.CosineAnnealing(10)(10) == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(ValueError, match="cannot be chained"):
        S.Chained([S.Exponential(0.9), S.OneCycle(1.0, 10)])


def test_per_group_base_lrs_with_an_absolute_floor(backend):
    """eta_min is absolute, as in torch: each group decays from its own lr to the same floor."""
    probes = [torch.zeros(1, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    opt = fusedlr.Lion([dict(params=[probes[0]], lr=0.1), dict(params=[probes[1]], lr=0.4)], betas=(0.5, 0.5),
                       schedule=S.CosineAnnealing(10, eta_min=0.01), backend=backend)  # fmt: skip
    ref = torch_scheduler_lrs(lambda o: L.CosineAnnealingLR(o, 10, 0.01), 15, base_lr=0.1)
    ref2 = torch_scheduler_lrs(lambda o: L.CosineAnnealingLR(o, 10, 0.01), 15, base_lr=0.4)
    previous = [0.0, 0.0]
    for k in range(15):
        for p in probes:
            p.grad = torch.ones_like(p)
        opt.step()
        now = [float(p.detach()) for p in probes]
        _close(previous[0] - now[0], ref[k], k)
        _close(previous[1] - now[1], ref2[k], k)
        previous = now


@pytest.mark.parametrize(
    "make, argument",
    [
        (lambda: S.WarmupConstant(-1), "warmup_steps"),
        (lambda: S.WarmupLinear(10, 5), "total_steps"),
        (lambda: S.WarmupCosine(10, 5), "total_steps"),
        (lambda: S.WarmupCosine(1, 5, min_lr_ratio=2.0), "min_lr_ratio"),
        (lambda: S.WarmupCosineHardRestarts(1, 5, num_cycles=0), "num_cycles"),
        (lambda: S.WarmupPolynomial(1, 5, lr_init=1e-3, lr_end=1e-2), "lr_end"),
        (lambda: S.WarmupPolynomial(5, 5, lr_init=1e-3), "total_steps"),
        (lambda: S.InverseSqrt(5, timescale=0), "timescale"),
        (lambda: S.WarmupStableDecay(5, 10), "stable_steps"),
        (lambda: S.WarmupStableDecay(5, 10, total_steps=12), "total_steps"),
        (lambda: S.WarmupStableDecay(5, 10, stable_steps=3, decay_type="exp"), "decay_type"),
        (lambda: S.Step(0), "step_size"),
        (lambda: S.Step(5, gamma=0.0), "gamma"),
        (lambda: S.Exponential(-0.5), "gamma"),
        (lambda: S.MultiStep([5, 5, 9]), "milestones"),
        (lambda: S.MultiStep([]), "milestones"),
        (lambda: S.Linear(start_factor=0.0), "start_factor"),
        (lambda: S.ConstantFactor(factor=1.5), "factor"),
        (lambda: S.Polynomial(total_iters=0), "total_iters"),
        (lambda: S.CosineAnnealing(0), "T_max"),
        (lambda: S.CosineRestarts(10, T_mult=0), "T_mult"),
        (lambda: S.Cyclic(0.1, 1.0, mode="sawtooth"), "mode"),
        (lambda: S.OneCycle(1.0, 100, pct_start=1.5), "pct_start"),
        (lambda: S.OneCycle(1.0, 100, anneal_strategy="exp"), "anneal_strategy"),
        (lambda: S.WarmupStableExpDecay(5, 10, half_life=0.0), "half_life"),
        (lambda: S.WarmupMultiStep(5, [10, 20], [0.5]), "factors"),
        (lambda: S.Sequential([S.Constant(), S.Constant()], [0]), "milestone"),
        (lambda: S.Sequential([S.Constant(), S.Constant(), S.Constant()], [9, 4]), "milestones"),
        (lambda: S.Sequential([S.Constant()], [5]), "milestones"),
        (lambda: S.Chained([]), "schedules"),
    ],
)
def test_invalid_arguments_name_the_argument(make, argument):
    with pytest.raises(ValueError, match=rf"Invalid {argument}\b"):
        make()


def test_batch_size_scaling_helpers():
    assert S.linear_scaled_lr(1e-4, 256, 2048) == pytest.approx(8e-4)  # the seed guide's example
    assert S.sqrt_scaled_lr(1e-4, 256, 2048) == pytest.approx(1e-4 * math.sqrt(8))
    assert S.max_lr_rule_of_thumb(1.0, 256) == pytest.approx(0.003)
    assert S.max_lr_rule_of_thumb(4.0, 1024) == pytest.approx(0.003)
    with pytest.raises(ValueError, match="batch_size"):
        S.linear_scaled_lr(1e-4, 256, 0)


def test_preview_and_plot(tmp_path):
    schedule = S.WarmupCosine(10, 100, min_lr_ratio=0.1)
    values = schedule.preview(120)
    assert len(values) == 120 and values[0] == 0.0 and values[10] == 1.0
    assert values == [schedule(k) for k in range(120)]
    pytest.importorskip("matplotlib")
    path = tmp_path / "curve.png"
    schedule.plot(120, path=path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_command_line_preview(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "cyclic.png"
    out = subprocess.run(
        [sys.executable, "-m", "fusedlr.schedules", "Cyclic", "base_lr=0.001", "max_lr=0.01", "step_size_up=50",
         "mode=triangular2", "--steps", "400", "--png", str(png)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "Cyclic(base_lr=0.001" in out.stdout and "max 0.01" in out.stdout
    assert png.exists()
