"""LRBench's policies (the LRBench++ seed) against LRBench's formulas, on the host and on the device.

The oracle below writes out LRBench's ``getLRFunction`` formulas (git-disl/LRBench, lr/LRfunctions.py)
with absolute learning rates, asin/sin and all; fusedlr's relative schedules must give the same
lr at every iteration once ``lrbench_policy`` has picked the base lr.
"""

import math

import pytest
import torch

import fusedlr
from fusedlr import schedules as S


def _tri(x):
    return (2 / math.pi) * math.fabs(math.asin(math.sin(x)))


def lrbench(policy, k0, k1=None, gamma=None, p=None, l=None):  # noqa: E741
    """LRBench's lr at iteration ``t``, as its formulas are written."""
    period = 2 * l if isinstance(l, (int, float)) else None
    f = {
        "FIX": lambda t: k0,
        "STEP": lambda t: k0 * gamma ** math.floor(t / l),
        "NSTEP": lambda t: k0 * gamma ** sum(t >= b for b in l),
        "EXP": lambda t: k0 * gamma**t,
        "INV": lambda t: k0 * (1 + gamma * t) ** (-p),
        "POLY": lambda t: (k1 - k0) * (1.0 - t / l) ** p + k0,
        "SIG": lambda t: k0 * 1.0 / (1 + math.exp(-1.0 * gamma * (t - l))),
        "TRI": lambda t: (k1 - k0) * _tri(math.pi * t / period) + k0,
        "TRI2": lambda t: (k1 - k0) * _tri(math.pi * t / period) / 2 ** math.floor(t / period) + k0,
        "TRIEXP": lambda t: (k1 - k0) * _tri(math.pi * t / period) * gamma**t + k0,
        "DTRI": lambda t: (k1 - k0) * _tri(math.pi * (t + l) / period) + k0,
        "DTRI2": lambda t: (k1 - k0) * _tri(math.pi * (t + l) / period) / 2 ** math.floor((t + l) / period) + k0,
        "DTRIEXP": lambda t: (k1 - k0) * _tri(math.pi * (t + l) / period) * gamma**t + k0,
        "SIN": lambda t: (k1 - k0) * math.fabs(math.sin(math.pi * t / period)) + k0,
        "SIN2": lambda t: (k1 - k0) * math.fabs(math.sin(math.pi * t / period)) / 2 ** math.floor(t / period) + k0,
        "SINEXP": lambda t: (k1 - k0) * math.fabs(math.sin(math.pi * t / period)) * gamma**t + k0,
        "DSIN": lambda t: (k1 - k0) * math.fabs(math.sin(math.pi * (t + l) / period)) + k0,
        "DSIN2": lambda t: (
            (k1 - k0) * math.fabs(math.sin(math.pi * (t + l) / period)) / 2 ** math.floor((t + l) / period) + k0
        ),
        "DSINEXP": lambda t: (k1 - k0) * math.fabs(math.sin(math.pi * (t + l) / period)) * gamma**t + k0,
        "COS": lambda t: (k1 - k0) * 0.5 * (1 + math.cos(math.pi * t / l)) + k0,
        "UPCOS": lambda t: (k1 - k0) * 0.5 * (1 + math.cos(math.pi * (t / l + 1.0))) + k0,
        "COS2": lambda t: (k1 - k0) * 0.5 * (1 + math.cos(math.pi * t / l)) / 2 ** math.floor((t + l) / (2 * l)) + k0,
        "UPCOS2": lambda t: (
            (k1 - k0) * 0.5 * (1 + math.cos(math.pi * (t / l + 1.0))) / 2 ** math.floor(t / (2 * l)) + k0
        ),
        "COSEXP": lambda t: (k1 - k0) * 0.5 * (1 + math.cos(math.pi * t / l)) * gamma**t + k0,
        "UPCOSEXP": lambda t: (k1 - k0) * 0.5 * (1 + math.cos(math.pi * (t / l + 1.0))) * gamma**t + k0,
        "RSW": lambda t: (k1 - k0) * (-t / l - math.floor(-t / l)) + k0,
        "RSW2": lambda t: (k1 - k0) * (-t / l - math.floor(-t / l)) / 2 ** math.floor(t / l) + k0,
        "RSWEXP": lambda t: (k1 - k0) * (-t / l - math.floor(-t / l)) * gamma**t + k0,
        "SINRSW": lambda t: (k1 - k0) * math.sin(math.pi / 2.0 * (-t / l - math.floor(-t / l))) + k0,
        "SINRSW2": lambda t: (
            (k1 - k0) * math.sin(math.pi / 2.0 * (-t / l - math.floor(-t / l))) / 2 ** math.floor(t / l) + k0
        ),
        "SINRSWEXP": lambda t: (k1 - k0) * math.sin(math.pi / 2.0 * (-t / l - math.floor(-t / l))) * gamma**t + k0,
        "COSRSW": lambda t: (k1 - k0) * 0.5 * (1 - math.cos(math.pi * (-t / l - math.floor(-t / l)))) + k0,
        "COSRSW2": lambda t: (
            (k1 - k0) * 0.5 * (1 - math.cos(math.pi * (-t / l - math.floor(-t / l)))) / 2 ** math.floor(t / l) + k0
        ),
        "COSRSWEXP": lambda t: (
            (k1 - k0) * 0.5 * (1 - math.cos(math.pi * (-t / l - math.floor(-t / l)))) * gamma**t + k0
        ),
    }
    return f[policy]


def _params(policy):
    """LRBench parameter sets as its papers use them, scaled to short horizons."""
    if policy == "FIX":
        return dict(k0=0.01)
    if policy == "STEP":
        return dict(k0=0.1, gamma=0.5, l=7)
    if policy == "NSTEP":
        return dict(k0=0.1, gamma=0.3, l=[10, 25, 40])
    if policy == "EXP":
        return dict(k0=0.1, gamma=0.96)
    if policy == "INV":
        return dict(k0=0.1, gamma=0.05, p=0.75)
    if policy == "POLY":
        return dict(k0=0.001, k1=0.1, p=1.5, l=48)
    if policy == "SIG":
        return dict(k0=0.1, gamma=-0.2, l=25)
    gamma = 0.97 if policy.endswith("EXP") else None
    return dict(k0=0.005, k1=0.1, gamma=gamma, l=6)


POLICIES = list(S.lrbench.LRBENCH_POLICIES)
HORIZON = 48  # several periods of every cycle, all the POLY decay


def _close(actual, expected, t):
    assert math.isclose(actual, expected, rel_tol=1e-9, abs_tol=1e-13), f"t={t}: {actual!r} != {expected!r}"


def test_every_lrbench_policy_is_covered():
    assert len(POLICIES) == 34 and len(set(POLICIES)) == 34


@pytest.mark.parametrize("policy", POLICIES)
def test_host_matches_lrbench(policy):
    params = _params(policy)
    base_lr, schedule = S.lrbench_policy(policy, **params)
    expected = lrbench(policy, **params)
    for t in range(HORIZON + 1):
        _close(schedule.lr(t, base_lr), expected(t), t)


@pytest.mark.parametrize("policy", POLICIES)
def test_device_matches_lrbench(triton_backend, policy):
    """The Triton finalize kernel's program interpreter (under TRITON_INTERPRET=1 on CPU)."""
    from fusedlr._triton import schedule_on_device

    params = _params(policy)
    base_lr, schedule = S.lrbench_policy(policy, **params)
    expected = lrbench(policy, **params)
    # the Triton interpreter costs ~35 ms a point: troughs (0, 12), peaks (6, 18), both sides of the
    # restarts and halvings (5-7, 11-13), an odd phase (29) and the end; the host test checks every update
    ks = [0, 1, 5, 6, 7, 11, 12, 13, 18, 29, 47]
    scale, offset = schedule_on_device(schedule, torch.tensor(ks, dtype=torch.int64))
    for t, s, o in zip(ks, scale.tolist(), offset.tolist()):
        _close(base_lr * s + o, expected(t), t)


def test_long_horizon_on_host_and_device(triton_backend):
    """Phase reduction keeps the waves exact thousands of steps in."""
    from fusedlr._triton import schedule_on_device

    cases = [("SIN2", dict(k0=1e-4, k1=0.1, l=150)), ("DTRIEXP", dict(k0=1e-4, k1=0.1, gamma=0.9995, l=200)),
             ("COS", dict(k0=0.0, k1=0.1, l=333)), ("COSRSW2", dict(k0=1e-3, k1=0.1, l=250))]  # fmt: skip
    ks = [0, 1, *range(149, 3001, 211), 2999, 3000]
    for policy, params in cases:
        base_lr, schedule = S.lrbench_policy(policy, **params)
        expected = lrbench(policy, **params)
        scale, offset = schedule_on_device(schedule, torch.tensor(ks, dtype=torch.int64))
        for t, s, o in zip(ks, scale.tolist(), offset.tolist()):
            _close(schedule.lr(t, base_lr), expected(t), t)
            _close(base_lr * s + o, expected(t), t)


@pytest.mark.parametrize("policy", ["INV", "SIG", "SINEXP", "DTRI2", "COSRSW"])
def test_applied_lr_matches_lrbench(backend, policy):
    """A float64 Lion probe with grad 1 moves by exactly the applied lr at every update."""
    params = _params(policy)
    base_lr, schedule = S.lrbench_policy(policy, **params)
    expected = lrbench(policy, **params)
    probe = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = fusedlr.Lion([probe], lr=base_lr, betas=(0.5, 0.5), schedule=schedule, backend=backend)
    previous = 0.0
    for t in range(20):
        probe.grad = torch.ones_like(probe)
        opt.step()
        now = float(probe.detach())
        _close(previous - now, expected(t), t)
        previous = now


def test_piecewise_composite_as_lrbench_runs_it(backend):
    """LRBench's piecewiseLR: each piece has its own k0 and sees the iteration since its boundary.
    Sequential + Scaled pieces reproduce it from one base lr, on the host and in the optimizer."""
    pieces = [("TRI", dict(k0=0.01, k1=0.1, l=5)), ("EXP", dict(k0=0.05, gamma=0.9)), ("FIX", dict(k0=0.002))]
    regions = [12, 20]
    base = 0.1
    schedule = S.Sequential(
        [S.Scaled(s, b / base) for b, s in (S.lrbench_policy(p, **kw) for p, kw in pieces)], milestones=regions
    )
    functions = [lrbench(p, **kw) for p, kw in pieces]

    def reference(t):
        starts = [0] + regions
        i = sum(t >= r for r in regions)
        return functions[i](t - starts[i])

    for t in range(40):
        _close(schedule.lr(t, base), reference(t), t)
    probe = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = fusedlr.AdamW([probe], lr=base, betas=(0.0, 0.0), eps=0.0, weight_decay=0.0, schedule=schedule,
                        backend=backend)  # fmt: skip
    previous = 0.0
    for t in range(26):
        probe.grad = torch.ones_like(probe)  # with beta1 = beta2 = 0 and eps 0, AdamW moves by exactly lr
        opt.step()
        now = float(probe.detach())
        _close(previous - now, reference(t), t)
        previous = now


def test_relative_schedules_have_a_multiplier():
    """Every new family is relative, so it composes with Chained and works as a LambdaLR lambda."""
    chained = S.Chained([S.SineCycle(4, 0.1), S.InverseDecay(0.1, 0.5)])
    assert chained(6) == pytest.approx(S.SineCycle(4, 0.1)(6) * (1 + 0.6) ** -0.5, rel=1e-12)
    assert S.TriangularCycle(10)(10) == pytest.approx(1.0) and S.TriangularCycle(10)(0) == 0.0
    assert S.CosineCycle(10, start="high")(0) == 1.0
    assert S.PolynomialDecay(10, 2.0, 0.1)(25) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "make, argument",
    [
        (lambda: S.InverseDecay(-0.1, 1.0), "gamma"),
        (lambda: S.InverseDecay(0.1, float("nan")), "power"),
        (lambda: S.Sigmoid(float("inf"), 5), "gamma"),
        (lambda: S.PolynomialDecay(0), "total_steps"),
        (lambda: S.PolynomialDecay(10, 0.0), "power"),
        (lambda: S.TriangularCycle(0), "half_period"),
        (lambda: S.SineCycle(5, -0.1), "min_ratio"),
        (lambda: S.CosineCycle(5, envelope="linear"), "envelope"),
        (lambda: S.CosineCycle(5, envelope="exponential", gamma=0.0), "gamma"),
        (lambda: S.TriangularCycle(5, start="middle"), "start"),
        (lambda: S.RestartCycle(5, wave="square"), "wave"),
        (lambda: S.RestartCycle(0), "period"),
        (lambda: S.Scaled(lambda k: 1.0, 0.5), "schedule"),
        (lambda: S.Scaled(S.Constant(), -1.0), "factor"),
        (lambda: S.lrbench_policy("CLR", 0.1), "lrPolicy"),
        (lambda: S.lrbench_policy("TRI", 0.01, 0.0, l=5), "k1"),
        (lambda: S.lrbench_policy("EXP", 0.0, gamma=0.9), "k0"),
    ],
)
def test_invalid_arguments_name_the_argument(make, argument):
    with pytest.raises(ValueError, match=rf"Invalid {argument}\b"):
        make()
