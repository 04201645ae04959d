"""Learning-rate schedules evaluated on the device, inside the optimizer step.

A schedule maps the update index ``k`` (0 for the first update the optimizer applies) to a
multiplier of each group's ``lr``. Every schedule here is a small immutable object with two
faces that compute the same arithmetic in float64:

* ``schedule(k) -> float``: the host mirror, used by the ``torch`` backend, by tests and plots;
* ``schedule.device_encoding() -> (kind, args)``: the numbers the Triton finalize kernel reads
  from a device table to evaluate the same formula from the device step counter, so a step
  needs no host value and no host synchronisation.

The formulas are Hugging Face's ``get_*_schedule_with_warmup`` lambdas as stepped by
``LambdaLR`` after each ``optimizer.step()``: update ``k`` uses ``multiplier(k)``, so the first
update of a warmup schedule has lr 0.

A plain Python callable ``k -> float`` is accepted wherever a schedule is; it is evaluated on
the host each step (folded into the uploaded group table), so it cannot be captured in a CUDA
graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "Schedule",
    "Constant",
    "WarmupConstant",
    "WarmupLinear",
    "WarmupCosine",
    "InverseSqrt",
]

# Device kinds: the Triton finalize kernel switches on these numbers (see _triton/kernels.py,
# `_schedule_multiplier`), which mirrors the host formulas below line for line.
KIND_CONSTANT = 0
KIND_WARMUP_CONSTANT = 1
KIND_WARMUP_LINEAR = 2
KIND_WARMUP_COSINE = 3
KIND_INVERSE_SQRT = 4
NUM_SCHEDULE_ARGS = 4


def _check_steps(name: str, value, *, allow_zero: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"Invalid {name}: {value!r} (expected an int)")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"Invalid {name}: {value}")


def _warmup(k: float, warmup_steps: int) -> float:
    return k / max(1.0, float(warmup_steps))


class Schedule:
    """Base class: subclasses define ``__call__`` and ``device_encoding``."""

    def __call__(self, k: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def device_encoding(self) -> tuple[int, tuple[float, ...]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def preview(self, total_steps: int) -> list[float]:
        """The multipliers of updates 0 .. total_steps - 1."""
        return [self(k) for k in range(total_steps)]


@dataclass(frozen=True)
class Constant(Schedule):
    """Multiplier 1 at every update (``LambdaLR(lambda k: 1.0)``)."""

    def __call__(self, k: int) -> float:
        return 1.0

    def device_encoding(self):
        return KIND_CONSTANT, (0.0, 0.0, 0.0, 0.0)


@dataclass(frozen=True)
class WarmupConstant(Schedule):
    """Linear warmup from 0, then 1. Reference: HF ``get_constant_schedule_with_warmup``."""

    warmup_steps: int

    def __post_init__(self):
        _check_steps("warmup_steps", self.warmup_steps)

    def __call__(self, k: int) -> float:
        if k < self.warmup_steps:
            return _warmup(float(k), self.warmup_steps)
        return 1.0

    def device_encoding(self):
        return KIND_WARMUP_CONSTANT, (float(self.warmup_steps), 0.0, 0.0, 0.0)


@dataclass(frozen=True)
class WarmupLinear(Schedule):
    """Linear warmup, then linear decay to 0 at ``total_steps`` (0 after it).

    Reference: HF ``get_linear_schedule_with_warmup``.
    """

    warmup_steps: int
    total_steps: int

    def __post_init__(self):
        _check_steps("warmup_steps", self.warmup_steps)
        _check_steps("total_steps", self.total_steps)
        if self.total_steps < self.warmup_steps:
            raise ValueError(f"Invalid total_steps: {self.total_steps} (must be >= warmup_steps={self.warmup_steps})")

    def __call__(self, k: int) -> float:
        if k < self.warmup_steps:
            return _warmup(float(k), self.warmup_steps)
        return max(0.0, float(self.total_steps - k) / max(1.0, float(self.total_steps - self.warmup_steps)))

    def device_encoding(self):
        return KIND_WARMUP_LINEAR, (float(self.warmup_steps), float(self.total_steps), 0.0, 0.0)


@dataclass(frozen=True)
class WarmupCosine(Schedule):
    """Linear warmup, then cosine decay to ``min_lr_ratio`` over ``num_cycles`` cycles.

    Reference: HF ``get_cosine_schedule_with_warmup`` (``min_lr_ratio=0``) and
    ``get_cosine_with_min_lr_schedule_with_warmup(min_lr_rate=...)``. Past ``total_steps`` the
    cosine keeps going, as in Hugging Face: with ``num_cycles=0.5`` the multiplier rises again.
    """

    warmup_steps: int
    total_steps: int
    num_cycles: float = 0.5
    min_lr_ratio: float = 0.0

    def __post_init__(self):
        _check_steps("warmup_steps", self.warmup_steps)
        _check_steps("total_steps", self.total_steps)
        if self.total_steps < self.warmup_steps:
            raise ValueError(f"Invalid total_steps: {self.total_steps} (must be >= warmup_steps={self.warmup_steps})")
        if not (isinstance(self.num_cycles, (int, float)) and self.num_cycles >= 0 and math.isfinite(self.num_cycles)):
            raise ValueError(f"Invalid num_cycles: {self.num_cycles}")
        if not (isinstance(self.min_lr_ratio, (int, float)) and 0.0 <= self.min_lr_ratio <= 1.0):
            raise ValueError(f"Invalid min_lr_ratio: {self.min_lr_ratio} (must be in [0, 1])")

    def __call__(self, k: int) -> float:
        if k < self.warmup_steps:
            return _warmup(float(k), self.warmup_steps)
        progress = float(k - self.warmup_steps) / max(1.0, float(self.total_steps - self.warmup_steps))
        factor = 0.5 * (1.0 + math.cos(math.pi * float(self.num_cycles) * 2.0 * progress))
        factor = factor * (1.0 - self.min_lr_ratio) + self.min_lr_ratio
        return max(0.0, factor)

    def device_encoding(self):
        return KIND_WARMUP_COSINE, (
            float(self.warmup_steps),
            float(self.total_steps),
            float(self.num_cycles),
            float(self.min_lr_ratio),
        )


@dataclass(frozen=True)
class InverseSqrt(Schedule):
    """Linear warmup, then ``1 / sqrt((k + timescale - warmup_steps) / timescale)``.

    Reference: HF ``get_inverse_sqrt_schedule``; ``timescale`` defaults to ``warmup_steps``, or
    10,000 when there is no warmup, as there.
    """

    warmup_steps: int
    timescale: int | None = None

    def __post_init__(self):
        _check_steps("warmup_steps", self.warmup_steps)
        if self.timescale is not None:
            _check_steps("timescale", self.timescale, allow_zero=False)

    @property
    def effective_timescale(self) -> int:
        if self.timescale is not None:
            return self.timescale
        return self.warmup_steps or 10_000

    def __call__(self, k: int) -> float:
        if k < self.warmup_steps:
            return _warmup(float(k), self.warmup_steps)
        timescale = self.effective_timescale
        shift = timescale - self.warmup_steps
        return 1.0 / math.sqrt((k + shift) / timescale)

    def device_encoding(self):
        return KIND_INVERSE_SQRT, (float(self.warmup_steps), float(self.effective_timescale), 0.0, 0.0)


def check_schedule(schedule) -> None:
    """Constructor-time validation of an optimizer's ``schedule`` argument."""
    if schedule is None or isinstance(schedule, Schedule):
        return
    if callable(schedule):
        return
    raise ValueError(
        f"Invalid schedule: {schedule!r} (expected a fusedlr.schedules.Schedule, a callable k -> float, or None)"
    )
