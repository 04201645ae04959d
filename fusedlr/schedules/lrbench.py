"""The learning-rate policies of LRBench (Wu, Liu et al.; the LRBench++ paper, arXiv 2309.08859).

LRBench writes every policy with absolute learning rates: ``k0`` (the starting or lower lr), ``k1``
(the upper or final lr), ``gamma``, ``p`` and a length ``l`` in iterations. Here each policy is a
*relative* schedule, so that it composes (``Chained``, ``Sequential``) and so that a tuner can draw
the peak lr apart from the shape: the group lr plays the role of the peak (``k1`` for cycles and
polynomial decay, ``k0`` for the decays that start at ``k0``) and ``min_ratio`` is the lower lr as a
fraction of it. ``lrbench_policy`` translates an LRBench parameter set into ``(base_lr, schedule)``
with ``schedule.lr(t, base_lr)`` equal to LRBench's value at iteration ``t``.

The cyclic families share one parametrisation: a *wave* between 0 and 1 (triangle, |sine|, raised
cosine, or a restarting sawtooth), scaled between ``min_ratio`` and 1, times an *envelope*:
``"constant"``, ``"halving"`` (LRBench's ``2`` suffix: the amplitude halves at every trough) or
``"exponential"`` (the ``EXP`` suffix: ``gamma ** k``). ``start="high"`` is LRBench's ``D``
prefix (TRI -> DTRI) and, for cosines, ``COS`` as opposed to ``UPCOS``.

The expression language has ``cos`` but no ``sin`` or ``asin``: the sine is a cosine shifted by a
quarter period after reducing the phase to one period, and the triangle (LRBench's
``(2/pi) * |asin(sin(x))|``) is the distance of the phase to the nearest integer, which is the same
function written without trigonometry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from . import program as P
from .base import Schedule, check_choice, check_float, check_int
from .library import Constant, Exponential, MultiStep, Step

ENVELOPES = ("constant", "halving", "exponential")
STARTS = ("low", "high")


# ===== decays ======================================================================================


@dataclass(frozen=True)
class InverseDecay(Schedule):
    """``(1 + gamma * k) ** -power``: LRBench's and Caffe's ``INV`` policy."""

    gamma: float
    power: float

    def __post_init__(self):
        check_float("gamma", self.gamma, low=0.0)
        check_float("power", self.power, low=0.0)

    def expressions(self, k):
        return (1 + float(self.gamma) * k) ** -float(self.power), P.lift(0.0)


@dataclass(frozen=True)
class Sigmoid(Schedule):
    """``1 / (1 + exp(-gamma * (k - center)))``: LRBench's and Caffe's ``SIG`` policy. A negative
    ``gamma`` decays from about 1 to 0 around ``center``; a positive one rises (a smooth warmup)."""

    gamma: float
    center: float

    def __post_init__(self):
        check_float("gamma", self.gamma)
        check_float("center", self.center)

    def expressions(self, k):
        return 1.0 / (1 + P.exp(-1.0 * float(self.gamma) * (k - float(self.center)))), P.lift(0.0)


@dataclass(frozen=True)
class PolynomialDecay(Schedule):
    """From 1 to ``min_ratio`` as ``(1 - k / total_steps) ** power``, held at ``min_ratio`` after
    ``total_steps``: LRBench's ``POLY`` (``(k1 - k0) * (1 - t/l) ** p + k0``, which has no value
    past ``l`` for fractional powers)."""

    total_steps: int
    power: float = 1.0
    min_ratio: float = 0.0

    def __post_init__(self):
        check_int("total_steps", self.total_steps, minimum=1)
        check_float("power", self.power, low=0.0, low_open=True)
        check_float("min_ratio", self.min_ratio, low=0.0)

    def expressions(self, k):
        remaining = 1.0 - 1.0 * P.minimum(k, float(self.total_steps)) / float(self.total_steps)
        return _between(self.min_ratio, remaining ** float(self.power)), P.lift(0.0)


# ===== cycles ======================================================================================


def _between(min_ratio: float, wave):
    """``min_ratio + (1 - min_ratio) * wave``: LRBench's ``(k1 - k0) * wave + k0`` divided by ``k1``."""
    return (1.0 - min_ratio) * wave + min_ratio


def _sin_pi(x):
    """``|sin(pi * x)|`` for x >= 0: the phase reduced to [0, 1), then a shifted cosine."""
    return P.absolute(P.cos(math.pi * (P.fmod1(x) - 0.5)))


def _envelope(envelope: str, gamma: float, k, completed_cycles):
    if envelope == "halving":
        return 1.0 / 2.0**completed_cycles
    if envelope == "exponential":
        return float(gamma) ** k
    return P.lift(1.0)


@dataclass(frozen=True)
class _Cycle(Schedule):
    """A wave of period ``2 * half_period`` between ``min_ratio`` and 1 times an envelope."""

    half_period: int
    min_ratio: float = 0.0
    envelope: str = "constant"
    gamma: float = 1.0
    start: str = "low"

    def __post_init__(self):
        check_int("half_period", self.half_period, minimum=1)
        check_float("min_ratio", self.min_ratio, low=0.0)
        check_choice("envelope", self.envelope, ENVELOPES)
        check_float("gamma", self.gamma, low=0.0, low_open=True)
        check_choice("start", self.start, STARTS)

    def wave(self, phase):  # pragma: no cover - abstract
        """The wave at ``phase`` (in periods, >= 0): 0 at whole periods, 1 half way."""
        raise NotImplementedError

    def expressions(self, k):
        half = float(self.half_period)
        # LRBench's D-variants shift the phase by half a period; cycles are counted from the troughs.
        shifted = k + half if self.start == "high" else k
        phase = shifted / (2.0 * half)
        completed = P.floor(shifted / (2.0 * half))
        wave = self.wave(phase) * _envelope(self.envelope, self.gamma, k, completed)
        return _between(self.min_ratio, wave), P.lift(0.0)


@dataclass(frozen=True)
class TriangularCycle(_Cycle):
    """Linear up over ``half_period`` updates, linear down over the next: LRBench's ``TRI``,
    ``TRI2`` (``envelope="halving"``), ``TRIEXP`` (``"exponential"``) and their ``D`` variants
    (``start="high"``). Smith's triangular cyclical lr."""

    def wave(self, phase):
        return 2.0 * P.absolute(phase - P.floor(phase + 0.5))


@dataclass(frozen=True)
class SineCycle(_Cycle):
    """``|sin(pi * k / (2 * half_period))|``: LRBench's ``SIN``, ``SIN2``, ``SINEXP``, ``DSIN``..."""

    def wave(self, phase):
        return _sin_pi(phase)


@dataclass(frozen=True)
class CosineCycle(_Cycle):
    """Raised cosine ``(1 - cos(pi * k / half_period)) / 2``: LRBench's ``UPCOS``, ``UPCOS2``,
    ``UPCOSEXP`` (``start="low"``) and ``COS``, ``COS2``, ``COSEXP`` (``start="high"``)."""

    def wave(self, phase):
        return 0.5 * (1.0 - P.cos(2.0 * math.pi * phase))


WAVES = ("linear", "sine", "cosine")


@dataclass(frozen=True)
class RestartCycle(Schedule):
    """LRBench's restart family: each period of ``period`` updates the lr falls from the top to
    ``min_ratio`` (linearly: ``RSW``; along a quarter sine: ``SINRSW``; along a half cosine:
    ``COSRSW``) and restarts. As in LRBench the restart update itself sits at the bottom (the phase
    is ``frac(-k / period)``). Envelopes as for the other cycles (``RSW2``, ``RSWEXP``, ...)."""

    period: int
    wave: str = "linear"
    min_ratio: float = 0.0
    envelope: str = "constant"
    gamma: float = 1.0

    def __post_init__(self):
        check_int("period", self.period, minimum=1)
        check_choice("wave", self.wave, WAVES)
        check_float("min_ratio", self.min_ratio, low=0.0)
        check_choice("envelope", self.envelope, ENVELOPES)
        check_float("gamma", self.gamma, low=0.0, low_open=True)

    def expressions(self, k):
        x = -1.0 * k / float(self.period)
        frac = x - P.floor(x)  # LRBench's phase, in [0, 1)
        if self.wave == "linear":
            value = frac
        elif self.wave == "sine":  # sin(pi/2 * frac) = cos(pi/2 * (1 - frac))
            value = P.cos(math.pi / 2.0 * (1.0 - frac))
        else:
            value = 0.5 * (1 - P.cos(math.pi * frac))
        completed = P.floor(1.0 * k / float(self.period))
        value = value * _envelope(self.envelope, self.gamma, k, completed)
        return _between(self.min_ratio, value), P.lift(0.0)


@dataclass(frozen=True)
class Scaled(Schedule):
    """``factor`` times another schedule: lets pieces of a ``Sequential`` keep their own base lr
    (LRBench's piecewise policies give every piece its own ``k0``)."""

    schedule: Schedule
    factor: float

    def __post_init__(self):
        if not isinstance(self.schedule, Schedule):
            raise ValueError(f"Invalid schedule: {self.schedule!r} is not a fusedlr schedule")
        check_float("factor", self.factor, low=0.0)

    def expressions(self, k):
        scale, offset = self.schedule.expressions(k)
        return float(self.factor) * scale, float(self.factor) * offset


# ===== LRBench's parameter sets ====================================================================

_CYCLES = {
    "TRI": (TriangularCycle, "low"),
    "SIN": (SineCycle, "low"),
    "UPCOS": (CosineCycle, "low"),
    "DTRI": (TriangularCycle, "high"),
    "DSIN": (SineCycle, "high"),
    "COS": (CosineCycle, "high"),
}
_RESTARTS = {"RSW": "linear", "SINRSW": "sine", "COSRSW": "cosine"}
LRBENCH_POLICIES = (
    ("FIX", "STEP", "NSTEP", "EXP", "INV", "POLY", "SIG")
    + tuple(name + suffix for name in _CYCLES for suffix in ("", "2", "EXP"))
    + tuple(name + suffix for name in _RESTARTS for suffix in ("", "2", "EXP"))
)


def lrbench_policy(lrPolicy: str, k0: float, k1=None, gamma=None, p=None, l=None):  # noqa: N803, E741
    """``(base_lr, schedule)`` for an LRBench policy, named and parametrised as LRBench's
    ``getLRFunction`` (``lrPolicy``, ``k0``, ``k1``, ``gamma``, ``p``, ``l``), such that
    ``schedule.lr(t, base_lr)`` is LRBench's lr at iteration ``t``. ``l`` is a list of boundaries
    for ``NSTEP``."""
    check_choice("lrPolicy", lrPolicy, LRBENCH_POLICIES)
    check_float("k0", k0, low=0.0, low_open=lrPolicy not in _CYCLES and lrPolicy not in _RESTARTS)
    if lrPolicy == "FIX":
        return k0, Constant()
    if lrPolicy == "STEP":
        return k0, Step(l, gamma)
    if lrPolicy == "NSTEP":
        return k0, MultiStep(tuple(l), gamma)
    if lrPolicy == "EXP":
        return k0, Exponential(gamma)
    if lrPolicy == "INV":
        return k0, InverseDecay(gamma, p)
    if lrPolicy == "SIG":
        return k0, Sigmoid(gamma, l)
    check_float("k1", k1, low=0.0, low_open=True)
    ratio = k0 / k1
    if lrPolicy == "POLY":
        return k1, PolynomialDecay(l, p, ratio)
    stem = lrPolicy[:-3] if lrPolicy.endswith("EXP") else lrPolicy.rstrip("2")
    envelope = "exponential" if lrPolicy.endswith("EXP") else "halving" if lrPolicy.endswith("2") else "constant"
    exp_gamma = gamma if envelope == "exponential" else 1.0
    if stem in _RESTARTS:
        return k1, RestartCycle(l, _RESTARTS[stem], ratio, envelope, exp_gamma)
    cls, start = _CYCLES[stem]
    return k1, cls(l, ratio, envelope, exp_gamma, start)
