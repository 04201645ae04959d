"""Schedules made of schedules: one after another, or multiplied together."""

from __future__ import annotations

from dataclasses import dataclass

from . import program as P
from .base import Schedule, check_int


@dataclass(frozen=True)
class Sequential(Schedule):
    """``schedules[0]`` until ``milestones[0]``, then ``schedules[1]``, ... Each piece sees its
    own local step, counted from 0 at its milestone. Reference: ``torch.optim.lr_scheduler.SequentialLR``.

    Re-warming for continued pretraining is one of these::

        Sequential([WarmupCosine(2_000, 100_000), WarmupCosine(1_000, 20_000)], milestones=[100_000])
    """

    schedules: tuple
    milestones: tuple

    def __post_init__(self):
        if not isinstance(self.schedules, (list, tuple)) or len(self.schedules) < 1:
            raise ValueError(f"Invalid schedules: {self.schedules!r} (expected a non-empty list of schedules)")
        for s in self.schedules:
            if not isinstance(s, Schedule):
                raise ValueError(f"Invalid schedules: {s!r} is not a fusedlr schedule")
        if not isinstance(self.milestones, (list, tuple)) or len(self.milestones) != len(self.schedules) - 1:
            raise ValueError(f"Invalid milestones: {self.milestones!r} (expected len(schedules) - 1 of them)")
        for m in self.milestones:
            check_int("milestone", m, minimum=1)
        if any(b <= a for a, b in zip(self.milestones, self.milestones[1:])):
            raise ValueError(f"Invalid milestones: {list(self.milestones)} (must be strictly increasing)")
        object.__setattr__(self, "schedules", tuple(self.schedules))
        object.__setattr__(self, "milestones", tuple(self.milestones))
        _ = self.program  # compiled now: a composite too long for the device interpreter is refused here

    def expressions(self, k):
        starts = (0,) + self.milestones
        pieces = [s.expressions(k - float(start) if start else k) for s, start in zip(self.schedules, starts)]
        scale, offset = pieces[-1]
        for milestone, (piece_scale, piece_offset) in zip(reversed(self.milestones), reversed(pieces[:-1])):
            scale = P.where(k < milestone, piece_scale, scale)
            offset = P.where(k < milestone, piece_offset, offset)
        return scale, offset


@dataclass(frozen=True)
class Chained(Schedule):
    """The product of the pieces' multipliers at every update. Reference:
    ``torch.optim.lr_scheduler.ChainedScheduler`` over multiplicative schedulers. Pieces that
    set absolute learning rates (eta_min, max_lr) have no multiplier and are refused."""

    schedules: tuple

    def __post_init__(self):
        if not isinstance(self.schedules, (list, tuple)) or not self.schedules:
            raise ValueError(f"Invalid schedules: {self.schedules!r} (expected a non-empty list of schedules)")
        for s in self.schedules:
            if not isinstance(s, Schedule):
                raise ValueError(f"Invalid schedules: {s!r} is not a fusedlr schedule")
            if s.program.has_offset:
                raise ValueError(f"Invalid schedules: {s!r} sets absolute learning rates and cannot be chained")
        object.__setattr__(self, "schedules", tuple(self.schedules))
        _ = self.program  # compiled now: a composite too long for the device interpreter is refused here

    def expressions(self, k):
        scale = P.lift(1.0)
        for s in self.schedules:
            scale = scale * s.expressions(k)[0]
        return scale, P.lift(0.0)
