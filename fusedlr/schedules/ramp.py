"""The LR range test's sweep as a device schedule (``fusedlr.find_lr`` runs it)."""

from __future__ import annotations

from dataclasses import dataclass

from . import program as P
from .base import Schedule, check_choice, check_float, check_int


@dataclass(frozen=True)
class RangeTestRamp(Schedule):
    """A multiplier from 1 at update 0 to ``end_factor`` at update ``num_steps - 1``.

    ``mode="exp"``: ``end_factor ** (k / (num_steps - 1))``; ``mode="linear"``:
    ``1 + (end_factor - 1) * k / (num_steps - 1)``. With a group lr of ``start_lr`` and
    ``end_factor = end_lr / start_lr`` this is the sweep of torch-lr-finder's ``ExponentialLR``
    (``base_lr * (end_lr / base_lr) ** r``, the same float64 operations) and ``LinearLR``
    (``r = k / (num_iter - 1)``); past the last update it keeps going.
    """

    end_factor: float
    num_steps: int
    mode: str = "exp"

    def __post_init__(self):
        check_float("end_factor", self.end_factor, low=0.0, low_open=True)
        check_int("num_steps", self.num_steps, minimum=2)
        check_choice("mode", self.mode, ("exp", "linear"))

    def expressions(self, k):
        r = k / float(self.num_steps - 1)
        if self.mode == "exp":
            return P.lift(float(self.end_factor)) ** r, P.lift(0.0)
        return 1.0 + (float(self.end_factor) - 1.0) * r, P.lift(0.0)
