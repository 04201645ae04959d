"""The schedules. Each is an immutable object written once, as an expression of ``k``.

Host-side constants are computed in Python exactly as the reference computes them (so
``float(max(1, warmup_steps))`` stays a folded constant), and only the ``k``-dependent part is
an expression, in the reference's order of operations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from . import program as P
from .base import Schedule, check_choice, check_float, check_int


def _warmup_ramp(k, warmup_steps: int):
    """Hugging Face's warmup: ``k / max(1, warmup_steps)``."""
    return k / float(max(1, warmup_steps))


def _check_warmup_total(warmup_steps, total_steps):
    check_int("warmup_steps", warmup_steps)
    check_int("total_steps", total_steps)
    if total_steps < warmup_steps:
        raise ValueError(f"Invalid total_steps: {total_steps} (must be >= warmup_steps={warmup_steps})")


# ===== Hugging Face (transformers.optimization) ===================================================


@dataclass(frozen=True)
class Constant(Schedule):
    """Multiplier 1. Reference: HF ``get_constant_schedule``."""

    def expressions(self, k):
        return P.lift(1.0), P.lift(0.0)


@dataclass(frozen=True)
class WarmupConstant(Schedule):
    """Linear warmup from 0, then 1. Reference: HF ``get_constant_schedule_with_warmup``."""

    warmup_steps: int

    def __post_init__(self):
        check_int("warmup_steps", self.warmup_steps)

    def expressions(self, k):
        return P.where(k < self.warmup_steps, _warmup_ramp(k, self.warmup_steps), 1.0), P.lift(0.0)


@dataclass(frozen=True)
class WarmupLinear(Schedule):
    """Linear warmup, linear decay to 0 at ``total_steps``, 0 after.
    Reference: HF ``get_linear_schedule_with_warmup``."""

    warmup_steps: int
    total_steps: int

    def __post_init__(self):
        _check_warmup_total(self.warmup_steps, self.total_steps)

    def expressions(self, k):
        decay = P.maximum(0.0, (self.total_steps - k) / float(max(1, self.total_steps - self.warmup_steps)))
        return P.where(k < self.warmup_steps, _warmup_ramp(k, self.warmup_steps), decay), P.lift(0.0)


def _cosine_progress(k, warmup_steps, total_steps):
    return (k - warmup_steps) / float(max(1, total_steps - warmup_steps))


@dataclass(frozen=True)
class WarmupCosine(Schedule):
    """Linear warmup, then cosine decay to ``min_lr_ratio`` over ``num_cycles`` waves.

    Reference: HF ``get_cosine_schedule_with_warmup`` (``min_lr_ratio=0``) and
    ``get_cosine_with_min_lr_schedule_with_warmup(min_lr_rate=...)``. Past ``total_steps`` the
    cosine goes on, as there: with ``num_cycles=0.5`` the multiplier rises again.
    """

    warmup_steps: int
    total_steps: int
    num_cycles: float = 0.5
    min_lr_ratio: float = 0.0

    def __post_init__(self):
        _check_warmup_total(self.warmup_steps, self.total_steps)
        check_float("num_cycles", self.num_cycles, low=0.0)
        check_float("min_lr_ratio", self.min_lr_ratio, low=0.0, high=1.0)

    def expressions(self, k):
        progress = _cosine_progress(k, self.warmup_steps, self.total_steps)
        factor = 0.5 * (1.0 + P.cos(math.pi * float(self.num_cycles) * 2.0 * progress))
        factor = factor * (1 - self.min_lr_ratio) + self.min_lr_ratio
        return P.where(k < self.warmup_steps, _warmup_ramp(k, self.warmup_steps), P.maximum(0.0, factor)), P.lift(0.0)


@dataclass(frozen=True)
class WarmupCosineLrRate(Schedule):
    """``WarmupCosine`` counted one update ahead: the warmup starts above 0, at
    ``1 / warmup_steps`` (or at ``warmup_lr_ratio``, reaching 1 at update ``warmup_steps - 1``),
    and the cosine's progress is ``(k - warmup_steps + 1) / (total_steps - warmup_steps)``.
    Reference: HF ``get_cosine_with_min_lr_schedule_with_warmup_lr_rate`` (the Trainer's
    ``cosine_warmup_with_min_lr``)."""

    warmup_steps: int
    total_steps: int
    num_cycles: float = 0.5
    min_lr_ratio: float = 0.0
    warmup_lr_ratio: float | None = None

    def __post_init__(self):
        _check_warmup_total(self.warmup_steps, self.total_steps)
        check_float("num_cycles", self.num_cycles, low=0.0)
        check_float("min_lr_ratio", self.min_lr_ratio, low=0.0, high=1.0)
        if self.warmup_lr_ratio is not None:
            check_float("warmup_lr_ratio", self.warmup_lr_ratio, low=0.0, high=1.0)

    def expressions(self, k):
        w, r0 = float(self.warmup_steps), self.warmup_lr_ratio
        if r0 is None:
            warm = (k + 1.0) / max(1.0, w)
        else:
            warm = float(r0) + (1.0 - float(r0)) * k / max(1, w - 1)
        progress = (k - w + 1.0) / max(1.0, float(self.total_steps) - w)
        factor = 0.5 * (1.0 + P.cos(math.pi * self.num_cycles * 2.0 * progress))
        factor = factor * (1 - self.min_lr_ratio) + self.min_lr_ratio
        return P.where(k < w, warm, P.maximum(0, factor)), P.lift(0.0)


@dataclass(frozen=True)
class WarmupCosineHardRestarts(Schedule):
    """Linear warmup, then ``num_cycles`` cosine decays each restarting from 1; 0 after
    ``total_steps``. Reference: HF ``get_cosine_with_hard_restarts_schedule_with_warmup``."""

    warmup_steps: int
    total_steps: int
    num_cycles: int = 1

    def __post_init__(self):
        _check_warmup_total(self.warmup_steps, self.total_steps)
        check_int("num_cycles", self.num_cycles, minimum=1)

    def expressions(self, k):
        progress = _cosine_progress(k, self.warmup_steps, self.total_steps)
        wave = P.maximum(0.0, 0.5 * (1.0 + P.cos(math.pi * P.fmod1(float(self.num_cycles) * progress))))
        decay = P.where(progress >= 1.0, 0.0, wave)
        return P.where(k < self.warmup_steps, _warmup_ramp(k, self.warmup_steps), decay), P.lift(0.0)


@dataclass(frozen=True)
class WarmupPolynomial(Schedule):
    """Linear warmup, then polynomial decay from ``lr_init`` to ``lr_end`` (absolute, as there),
    held after ``total_steps``. ``lr_init`` is the optimizer's default lr, which Hugging Face
    reads from ``optimizer.defaults["lr"]``. Reference: HF
    ``get_polynomial_decay_schedule_with_warmup``."""

    warmup_steps: int
    total_steps: int
    lr_init: float
    lr_end: float = 1e-7
    power: float = 1.0

    def __post_init__(self):
        _check_warmup_total(self.warmup_steps, self.total_steps)
        if self.total_steps == self.warmup_steps:
            raise ValueError(f"Invalid total_steps: {self.total_steps} (must be > warmup_steps for a decay)")
        check_float("lr_init", self.lr_init, low=0.0, low_open=True)
        check_float("lr_end", self.lr_end, low=0.0)
        if not self.lr_init > self.lr_end:
            raise ValueError(f"Invalid lr_end: {self.lr_end} (must be smaller than lr_init={self.lr_init})")
        check_float("power", self.power, low=0.0, low_open=True)

    def expressions(self, k):
        decay_steps = self.total_steps - self.warmup_steps
        pct_remaining = 1 - (k - self.warmup_steps) / float(decay_steps)
        decay = (self.lr_init - self.lr_end) * pct_remaining**self.power + self.lr_end
        after = P.where(k > self.total_steps, self.lr_end / self.lr_init, decay / self.lr_init)
        return P.where(k < self.warmup_steps, _warmup_ramp(k, self.warmup_steps), after), P.lift(0.0)


@dataclass(frozen=True)
class InverseSqrt(Schedule):
    """Linear warmup, then ``1 / sqrt((k + timescale - warmup_steps) / timescale)``.

    Reference: HF ``get_inverse_sqrt_schedule``; ``timescale`` defaults to ``warmup_steps``, or
    10,000 without warmup, as there.
    """

    warmup_steps: int
    timescale: int | None = None

    def __post_init__(self):
        check_int("warmup_steps", self.warmup_steps)
        if self.timescale is not None:
            check_int("timescale", self.timescale, minimum=1)

    @property
    def effective_timescale(self) -> int:
        return self.timescale if self.timescale is not None else (self.warmup_steps or 10_000)

    def expressions(self, k):
        timescale = self.effective_timescale
        decay = 1.0 / P.sqrt((k + (timescale - self.warmup_steps)) / float(timescale))
        return P.where(k < self.warmup_steps, _warmup_ramp(k, self.warmup_steps), decay), P.lift(0.0)


_SHAPES = ("linear", "cosine", "1-sqrt")


@dataclass(frozen=True)
class WarmupStableDecay(Schedule):
    """Warmup from ``min_lr_ratio`` to 1, a stable phase at 1, a decay back to ``min_lr_ratio``,
    then ``min_lr_ratio``. Warmup and decay shapes: linear, cosine or 1-sqrt. Give
    ``stable_steps`` or ``total_steps`` (then ``stable = total - warmup - decay``).
    Reference: HF ``get_wsd_schedule``."""

    warmup_steps: int
    decay_steps: int
    total_steps: int | None = None
    stable_steps: int | None = None
    warmup_type: str = "linear"
    decay_type: str = "cosine"
    min_lr_ratio: float = 0.0
    num_cycles: float = 0.5

    def __post_init__(self):
        check_int("warmup_steps", self.warmup_steps)
        check_int("decay_steps", self.decay_steps)
        if self.stable_steps is None:
            if self.total_steps is None:
                raise ValueError("Invalid stable_steps: None (give stable_steps or total_steps)")
            check_int("total_steps", self.total_steps)
            if self.total_steps < self.warmup_steps + self.decay_steps:
                raise ValueError(
                    f"Invalid total_steps: {self.total_steps} (must be >= warmup_steps + decay_steps = "
                    f"{self.warmup_steps + self.decay_steps})"
                )
        else:
            check_int("stable_steps", self.stable_steps)
        check_choice("warmup_type", self.warmup_type, _SHAPES)
        check_choice("decay_type", self.decay_type, _SHAPES)
        check_float("min_lr_ratio", self.min_lr_ratio, low=0.0, high=1.0)
        check_float("num_cycles", self.num_cycles, low=0.0)

    @property
    def effective_stable_steps(self) -> int:
        if self.stable_steps is not None:
            return self.stable_steps
        return self.total_steps - self.warmup_steps - self.decay_steps

    def expressions(self, k):
        w, s, d, r = self.warmup_steps, self.effective_stable_steps, self.decay_steps, self.min_lr_ratio
        p = k / float(max(1, w))
        warm = {"linear": p, "cosine": 0.5 * (1.0 - P.cos(math.pi * p)), "1-sqrt": 1.0 - P.sqrt(1.0 - p)}
        warm = P.maximum(0.0, warm[self.warmup_type] * (1.0 - r) + r)
        q = (k - float(w + s)) / float(max(1, d))
        decay = {
            "linear": 1.0 - q,
            "cosine": 0.5 * (1.0 + P.cos(math.pi * float(self.num_cycles) * 2.0 * q)),
            "1-sqrt": 1.0 - P.sqrt(q),
        }
        decay = P.maximum(0.0, decay[self.decay_type] * (1.0 - r) + r)
        value = P.where(k < w, warm, P.where(k < w + s, 1.0, P.where(k < w + s + d, decay, r)))
        return value, P.lift(0.0)


# ===== torch.optim.lr_scheduler, closed forms ========================================================


def _check_gamma(gamma):
    check_float("gamma", gamma, low=0.0, low_open=True)


@dataclass(frozen=True)
class Step(Schedule):
    """``gamma ** (k // step_size)``. Reference: ``torch.optim.lr_scheduler.StepLR``."""

    step_size: int
    gamma: float = 0.1

    def __post_init__(self):
        check_int("step_size", self.step_size, minimum=1)
        _check_gamma(self.gamma)

    def expressions(self, k):
        return float(self.gamma) ** P.floor(k / float(self.step_size)), P.lift(0.0)


def _check_milestones(milestones, name="milestones"):
    if not isinstance(milestones, (list, tuple)) or not milestones:
        raise ValueError(f"Invalid {name}: {milestones!r} (expected a non-empty list of ints)")
    for m in milestones:
        check_int(name[:-1] if name.endswith("s") else name, m, minimum=1)
    if any(b <= a for a, b in zip(milestones, milestones[1:])):
        raise ValueError(f"Invalid {name}: {list(milestones)} (must be strictly increasing)")


@dataclass(frozen=True)
class MultiStep(Schedule):
    """``gamma ** (number of milestones <= k)``. Reference: ``torch.optim.lr_scheduler.MultiStepLR``."""

    milestones: tuple
    gamma: float = 0.1

    def __post_init__(self):
        _check_milestones(self.milestones)
        object.__setattr__(self, "milestones", tuple(self.milestones))
        _check_gamma(self.gamma)

    def expressions(self, k):
        passed = P.lift(0.0)
        for m in self.milestones:
            passed = passed + (k >= m)
        return float(self.gamma) ** passed, P.lift(0.0)


@dataclass(frozen=True)
class Exponential(Schedule):
    """``gamma ** k``. Reference: ``torch.optim.lr_scheduler.ExponentialLR``."""

    gamma: float

    def __post_init__(self):
        _check_gamma(self.gamma)

    def expressions(self, k):
        return float(self.gamma) ** k, P.lift(0.0)


@dataclass(frozen=True)
class Linear(Schedule):
    """From ``start_factor`` to ``end_factor`` over ``total_iters`` updates, then held.
    Reference: ``torch.optim.lr_scheduler.LinearLR``."""

    start_factor: float = 1.0 / 3
    end_factor: float = 1.0
    total_iters: int = 5

    def __post_init__(self):
        check_float("start_factor", self.start_factor, low=0.0, high=1.0, low_open=True)
        check_float("end_factor", self.end_factor, low=0.0, high=1.0)
        check_int("total_iters", self.total_iters, minimum=1)

    def expressions(self, k):
        span = self.end_factor - self.start_factor
        return self.start_factor + span * P.minimum(float(self.total_iters), k) / float(self.total_iters), P.lift(0.0)


@dataclass(frozen=True)
class ConstantFactor(Schedule):
    """``factor`` for the first ``total_iters`` updates, then 1.
    Reference: ``torch.optim.lr_scheduler.ConstantLR``."""

    factor: float = 1.0 / 3
    total_iters: int = 5

    def __post_init__(self):
        check_float("factor", self.factor, low=0.0, high=1.0)
        check_int("total_iters", self.total_iters)

    def expressions(self, k):
        return self.factor + (k >= self.total_iters) * (1 - self.factor), P.lift(0.0)


@dataclass(frozen=True)
class Polynomial(Schedule):
    """``(1 - min(k, total_iters) / total_iters) ** power``: 0 from ``total_iters`` on.
    Reference: ``torch.optim.lr_scheduler.PolynomialLR``."""

    total_iters: int = 5
    power: float = 1.0

    def __post_init__(self):
        check_int("total_iters", self.total_iters, minimum=1)
        check_float("power", self.power, low=0.0, low_open=True)

    def expressions(self, k):
        remaining = 1.0 - P.minimum(float(self.total_iters), k) / float(self.total_iters)
        return remaining ** float(self.power), P.lift(0.0)


def _cosine_between(eta_min: float, angle):
    """torch's ``eta_min + (base_lr - eta_min) * (1 + cos(angle)) / 2`` as (scale, offset)."""
    wave = (1 + P.cos(angle)) / 2
    if eta_min == 0.0:
        return wave, P.lift(0.0)  # purely relative: it keeps a multiplier, LambdaLR-compatible
    return wave, eta_min - eta_min * wave


@dataclass(frozen=True)
class CosineAnnealing(Schedule):
    """Cosine from the group lr to ``eta_min`` (absolute) over ``T_max`` updates, periodic after.
    Reference: ``torch.optim.lr_scheduler.CosineAnnealingLR``."""

    T_max: int
    eta_min: float = 0.0

    def __post_init__(self):
        check_int("T_max", self.T_max, minimum=1)
        check_float("eta_min", self.eta_min, low=0.0)

    def expressions(self, k):
        return _cosine_between(self.eta_min, math.pi * k / float(self.T_max))


@dataclass(frozen=True)
class CosineRestarts(Schedule):
    """SGDR: cosine from the group lr to ``eta_min`` over ``T_0`` updates, restarting with
    periods growing by ``T_mult``. Reference: ``torch.optim.lr_scheduler.CosineAnnealingWarmRestarts``."""

    T_0: int
    T_mult: int = 1
    eta_min: float = 0.0

    def __post_init__(self):
        check_int("T_0", self.T_0, minimum=1)
        check_int("T_mult", self.T_mult, minimum=1)
        check_float("eta_min", self.eta_min, low=0.0)

    def expressions(self, k):
        t0 = float(self.T_0)
        if self.T_mult == 1:
            t_cur = k - t0 * P.floor(k / t0)
            t_i = P.lift(t0)
        else:
            mult = float(self.T_mult)

            def start(n):  # first update of restart n: T_0 * (T_mult**n - 1) / (T_mult - 1), exact
                return t0 * (mult**n - 1.0) / (mult - 1.0)

            guess = P.floor(P.log(k / t0 * (mult - 1.0) + 1.0) / math.log(mult))
            # log() may land a hair below an integer: correct the guess with exact integer powers.
            n = guess + (start(guess + 1.0) <= k) - (start(guess) > k)
            t_cur = k - start(n)
            t_i = t0 * mult**n
        return _cosine_between(self.eta_min, math.pi * t_cur / t_i)


@dataclass(frozen=True)
class Cyclic(Schedule):
    """Cyclical lr between ``base_lr`` and ``max_lr`` (both absolute: like torch, the group lr
    is replaced). Modes: triangular, triangular2, exp_range. The lr part of
    ``torch.optim.lr_scheduler.CyclicLR`` (its momentum cycling is not applied)."""

    base_lr: float
    max_lr: float
    step_size_up: int = 2000
    step_size_down: int | None = None
    mode: str = "triangular"
    gamma: float = 1.0

    def __post_init__(self):
        check_float("base_lr", self.base_lr, low=0.0)
        check_float("max_lr", self.max_lr, low=0.0)
        check_int("step_size_up", self.step_size_up, minimum=1)
        if self.step_size_down is not None:
            check_int("step_size_down", self.step_size_down, minimum=1)
        check_choice("mode", self.mode, ("triangular", "triangular2", "exp_range"))
        _check_gamma(self.gamma)
        if self.mode == "exp_range" and self.gamma > 1.0:
            # The amplitude grows as gamma**k without bound: torch raises OverflowError once that
            # overflows (k near 709 / ln(gamma)); the device cannot raise, and would go to nan.
            raise ValueError(
                f"Invalid gamma: {self.gamma!r} (mode='exp_range' needs gamma <= 1; gamma > 1 grows the lr without "
                "bound until gamma**k overflows, where torch's CyclicLR raises OverflowError)"
            )

    def expressions(self, k):
        up = float(self.step_size_up)
        down = float(self.step_size_down) if self.step_size_down is not None else up
        total_size = up + down
        step_ratio = up / total_size
        cycle = P.floor(1 + k / total_size)
        x = 1.0 + k / total_size - cycle
        scale_factor = P.where(x <= step_ratio, x / step_ratio, (x - 1) / (step_ratio - 1))
        base_height = (self.max_lr - self.base_lr) * scale_factor
        if self.mode == "triangular":
            lr = self.base_lr + base_height * 1.0
        elif self.mode == "triangular2":
            lr = self.base_lr + base_height * (1 / (2.0 ** (cycle - 1)))
        else:
            lr = self.base_lr + base_height * (float(self.gamma) ** k)
        return P.lift(0.0), lr


@dataclass(frozen=True)
class OneCycle(Schedule):
    """1cycle: from ``max_lr / div_factor`` up to ``max_lr`` (absolute: the group lr is
    replaced, as torch does) and down to ``initial / final_div_factor``; cos or linear
    annealing, two or three phases. The lr part of ``torch.optim.lr_scheduler.OneCycleLR``
    (its momentum cycling is not applied). torch refuses to step past ``total_steps``; here
    the last phase's formula simply continues."""

    max_lr: float
    total_steps: int
    pct_start: float = 0.3
    anneal_strategy: str = "cos"
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    three_phase: bool = False

    def __post_init__(self):
        check_float("max_lr", self.max_lr, low=0.0)
        check_int("total_steps", self.total_steps, minimum=1)
        check_float("pct_start", self.pct_start, low=0.0, high=1.0)
        check_choice("anneal_strategy", self.anneal_strategy, ("cos", "linear"))
        check_float("div_factor", self.div_factor, low=0.0, low_open=True)
        check_float("final_div_factor", self.final_div_factor, low=0.0, low_open=True)

    def expressions(self, k):
        initial = self.max_lr / self.div_factor
        minimum = initial / self.final_div_factor
        total = self.total_steps
        if self.three_phase:
            phases = [
                (float(self.pct_start * total) - 1, initial, self.max_lr),
                (float(2 * self.pct_start * total) - 2, self.max_lr, initial),
                (total - 1, initial, minimum),
            ]
        else:
            phases = [(float(self.pct_start * total) - 1, initial, self.max_lr), (total - 1, self.max_lr, minimum)]

        def anneal(start, end, pct):
            if self.anneal_strategy == "cos":
                return end + (start - end) / 2.0 * (P.cos(math.pi * pct) + 1)
            return (end - start) * pct + start

        values, start_step = [], 0
        for end_step, lr_start, lr_end in phases:
            values.append(anneal(lr_start, lr_end, (k - start_step) / float(end_step - start_step)))
            start_step = end_step
        lr = values[-1]
        for (end_step, _, _), value in zip(reversed(phases[:-1]), reversed(values[:-1])):
            lr = P.where(k <= end_step, value, lr)
        return P.lift(0.0), lr


# ===== recipes from LLM pretraining ==================================================================


@dataclass(frozen=True)
class WarmupStableExpDecay(Schedule):
    """Warmup-stable-decay with an exponential decay: linear warmup, 1 for ``stable_steps``,
    then ``0.5 ** ((k - warmup - stable) / half_life)``, never below ``min_lr_ratio``.
    Reference: MiniCPM (Hu et al., 2024), WSD with exponential decay f(s - T) = 0.5^((s - T)/T_half)."""

    warmup_steps: int
    stable_steps: int
    half_life: float
    min_lr_ratio: float = 0.0

    def __post_init__(self):
        check_int("warmup_steps", self.warmup_steps)
        check_int("stable_steps", self.stable_steps)
        check_float("half_life", self.half_life, low=0.0, low_open=True)
        check_float("min_lr_ratio", self.min_lr_ratio, low=0.0, high=1.0)

    def expressions(self, k):
        decay_start = self.warmup_steps + self.stable_steps
        decay = P.maximum(self.min_lr_ratio, 0.5 ** ((k - float(decay_start)) / float(self.half_life)))
        value = P.where(k < self.warmup_steps, _warmup_ramp(k, self.warmup_steps), P.where(k < decay_start, 1.0, decay))
        return value, P.lift(0.0)


@dataclass(frozen=True)
class WarmupMultiStep(Schedule):
    """Linear warmup, then 1 until the first milestone, then ``factors[i]`` from
    ``milestones[i]`` on. ``WarmupMultiStep.deepseek(warmup, total)`` is DeepSeek LLM's recipe:
    31.6% of the peak after 80% of training, 10% after 90% (DeepSeek-AI, 2024, §2.3)."""

    warmup_steps: int
    milestones: tuple
    factors: tuple

    def __post_init__(self):
        check_int("warmup_steps", self.warmup_steps)
        _check_milestones(self.milestones)
        if not isinstance(self.factors, (list, tuple)) or len(self.factors) != len(self.milestones):
            raise ValueError(f"Invalid factors: {self.factors!r} (one per milestone)")
        for f in self.factors:
            check_float("factor", f, low=0.0)
        if self.milestones[0] < self.warmup_steps:
            raise ValueError(f"Invalid milestones: {list(self.milestones)} (the first must be >= warmup_steps)")
        object.__setattr__(self, "milestones", tuple(self.milestones))
        object.__setattr__(self, "factors", tuple(float(f) for f in self.factors))

    @classmethod
    def deepseek(cls, warmup_steps: int, total_steps: int) -> WarmupMultiStep:
        check_int("total_steps", total_steps, minimum=1)
        return cls(warmup_steps, (round(0.8 * total_steps), round(0.9 * total_steps)), (0.316, 0.1))

    def expressions(self, k):
        value = P.lift(1.0)
        for milestone, factor in zip(self.milestones, self.factors):
            value = P.where(k >= milestone, factor, value)
        return P.where(k < self.warmup_steps, _warmup_ramp(k, self.warmup_steps), value), P.lift(0.0)
