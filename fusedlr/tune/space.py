"""Policy families and their search spaces: what a trial may draw, and how it becomes a schedule.

A family turns a dict of plain parameters and the trial's step budget into a ``fusedlr.schedules``
object. Lengths are drawn as fractions of the budget (so one space serves any budget) and
decay rates as the multiplier reached at the end of the budget, which is how people think about
them. Each family declares its ranges once; the same declaration serves Optuna's random and TPE
samplers (``suggest``) and the grid (``grid``: a few values per parameter).

The four categories are the seed's: fixed, decaying, cyclic and composite policies.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

from .. import schedules as S

CATEGORIES = ("fixed", "decaying", "cyclic", "composite")


@dataclass(frozen=True)
class Param:
    """One parameter: a float range (``log`` for log-uniform), an int range, or choices."""

    low: float = 0.0
    high: float = 1.0
    log: bool = False
    integer: bool = False
    choices: tuple = ()
    grid: tuple = ()  # the values a grid search visits

    def suggest(self, trial, name: str):
        if self.choices:
            return trial.suggest_categorical(name, list(self.choices))
        if self.integer:
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    def grid_values(self) -> tuple:
        if self.grid:
            return self.grid
        if self.choices:
            return self.choices
        if self.low == self.high:
            return (self.low,)
        mid = math.sqrt(self.low * self.high) if self.log else (self.low + self.high) / 2
        return (int(round(mid)),) if self.integer else (mid,)


@dataclass(frozen=True)
class Family:
    """A policy family: its category, parameter ranges and the schedule they build."""

    name: str
    category: str
    params: dict = field(default_factory=dict)
    build_fn: object = None  # (params: dict, steps: int) -> Schedule

    def build(self, params: dict, steps: int) -> S.Schedule:
        return self.build_fn(params, steps)

    def suggest(self, trial) -> dict:
        """Draw this family's parameters from an Optuna trial (names prefixed by the family)."""
        return {name: p.suggest(trial, f"{self.name}.{name}") for name, p in self.params.items()}

    def grid(self) -> list[dict]:
        names = list(self.params)
        return [
            dict(zip(names, values)) for values in itertools.product(*(self.params[n].grid_values() for n in names))
        ]


def _at_least_1(x) -> int:
    return max(1, int(round(x)))


def _rate(end_ratio: float, steps: int) -> float:
    """The per-update factor that reaches ``end_ratio`` after ``steps`` updates."""
    return float(end_ratio) ** (1.0 / max(1, steps))


def _cycle(cls):
    def build(p, steps):
        half = _at_least_1(steps / (2 * p["cycles"]))
        gamma = _rate(p["end_ratio"], steps) if p["envelope"] == "exponential" else 1.0
        return cls(half, p["min_ratio"], p["envelope"], gamma, p["start"])

    return build


_CYCLE_PARAMS = {
    "cycles": Param(1, 4, integer=True, grid=(1, 3)),
    "min_ratio": Param(0.01, 0.5, log=True, grid=(0.05,)),
    "envelope": Param(choices=("constant", "halving", "exponential")),
    "end_ratio": Param(0.01, 0.5, log=True, grid=(0.05,)),  # used by the exponential envelope only
    "start": Param(choices=("low", "high")),
}


def _cyclic_then_decay(p, steps):
    switch = _at_least_1(p["switch"] * steps)
    half = _at_least_1(switch / (2 * p["cycles"]))
    rest = max(1, steps - switch)
    cycle = S.TriangularCycle(half, p["min_ratio"], start="low")
    decay = S.Scaled(S.PolynomialDecay(rest, p["power"], 0.0), p["min_ratio"] if p["from"] == "low" else 1.0)
    return S.Sequential([cycle, decay], [switch])


def _warmup_constant_decay(p, steps):
    warmup = _at_least_1(p["warmup"] * steps)
    decay = _at_least_1(p["decay"] * steps)
    stable = max(1, steps - warmup - decay)
    pieces = [S.Linear(p["warmup_start"], 1.0, warmup), S.Constant(), S.PolynomialDecay(decay, p["power"], 0.0)]
    return S.Sequential(pieces, [warmup, warmup + stable])


def _fixed_then_step(p, steps):
    switch = _at_least_1(p["switch"] * steps)
    return S.Sequential([S.Constant(), S.Scaled(S.Step(_at_least_1(p["step"] * steps), p["gamma"]), 1.0)], [switch])


FAMILIES = {
    f.name: f
    for f in [
        Family("fixed", "fixed", {}, lambda p, steps: S.Constant()),
        Family(
            "step",
            "decaying",
            {"step": Param(0.1, 0.5, grid=(0.25,)), "gamma": Param(0.1, 0.7, grid=(0.3,))},
            lambda p, steps: S.Step(_at_least_1(p["step"] * steps), p["gamma"]),
        ),
        Family(
            "exponential",
            "decaying",
            {"end_ratio": Param(0.001, 0.5, log=True, grid=(0.01, 0.1))},
            lambda p, steps: S.Exponential(_rate(p["end_ratio"], steps)),
        ),
        Family(
            "inverse",  # INV: the rate is drawn as gamma * steps (the decay's knee relative to the budget)
            "decaying",
            {"knees": Param(0.3, 100.0, log=True, grid=(10.0,)), "power": Param(0.3, 1.5, grid=(0.75,))},
            lambda p, steps: S.InverseDecay(p["knees"] / steps, p["power"]),
        ),
        Family(
            "polynomial",
            "decaying",
            {"power": Param(0.5, 3.0, grid=(1.0, 2.0)), "min_ratio": Param(0.001, 0.2, log=True, grid=(0.01,))},
            lambda p, steps: S.PolynomialDecay(steps, p["power"], p["min_ratio"]),
        ),
        Family(
            "sigmoid",  # SIG with a negative gamma: about 1, then a smooth fall around `center`
            "decaying",
            {"center": Param(0.2, 0.8, grid=(0.5,)), "sharpness": Param(2.0, 30.0, log=True, grid=(10.0,))},
            lambda p, steps: S.Sigmoid(-p["sharpness"] / steps, p["center"] * steps),
        ),
        Family(
            "cosine",
            "decaying",
            {"warmup": Param(0.0, 0.2, grid=(0.0, 0.1)), "min_ratio": Param(0.0, 0.2, grid=(0.0,))},
            lambda p, steps: S.WarmupCosine(int(p["warmup"] * steps), steps, min_lr_ratio=p["min_ratio"]),
        ),
        Family("triangular", "cyclic", dict(_CYCLE_PARAMS), _cycle(S.TriangularCycle)),
        Family("sine", "cyclic", dict(_CYCLE_PARAMS), _cycle(S.SineCycle)),
        Family("cosine_cycle", "cyclic", dict(_CYCLE_PARAMS), _cycle(S.CosineCycle)),
        Family(
            "restart",
            "cyclic",
            {
                "cycles": Param(1, 6, integer=True, grid=(2, 4)),
                "wave": Param(choices=("linear", "sine", "cosine")),
                "min_ratio": Param(0.001, 0.3, log=True, grid=(0.01,)),
            },
            lambda p, steps: S.RestartCycle(_at_least_1(steps / p["cycles"]), p["wave"], p["min_ratio"]),
        ),
        Family(
            "cyclic_then_decay",
            "composite",
            {
                "switch": Param(0.3, 0.8, grid=(0.5,)),
                "cycles": Param(1, 4, integer=True, grid=(2,)),
                "min_ratio": Param(0.01, 0.5, log=True, grid=(0.1,)),
                "from": Param(choices=("high", "low")),
                "power": Param(0.5, 3.0, grid=(1.0,)),
            },
            _cyclic_then_decay,
        ),
        Family(
            "warmup_constant_decay",
            "composite",
            {
                "warmup": Param(0.0, 0.2, grid=(0.05,)),
                "warmup_start": Param(0.01, 0.5, log=True, grid=(0.1,)),
                "decay": Param(0.1, 0.6, grid=(0.2, 0.4)),
                "power": Param(0.5, 3.0, grid=(1.0,)),
            },
            _warmup_constant_decay,
        ),
        Family(
            "fixed_then_step",
            "composite",
            {
                "switch": Param(0.3, 0.8, grid=(0.5,)),
                "step": Param(0.05, 0.3, grid=(0.15,)),
                "gamma": Param(0.1, 0.7, grid=(0.3,)),
            },
            _fixed_then_step,
        ),
    ]
}


def select_families(spec) -> list[Family]:
    """Families from names or categories: ``"all"``, ``"fixed,cyclic"``, ``["sine", "step"]``."""
    if spec is None or spec == "all":
        return list(FAMILIES.values())
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    chosen: list[Family] = []
    for name in (n.strip() for n in names):
        if name in CATEGORIES:
            chosen += [f for f in FAMILIES.values() if f.category == name and f not in chosen]
        elif name in FAMILIES:
            if FAMILIES[name] not in chosen:
                chosen.append(FAMILIES[name])
        else:
            valid = ", ".join(list(CATEGORIES) + list(FAMILIES))
            raise ValueError(f"Invalid family: {name!r} (expected one of {valid})")
    if not chosen:
        raise ValueError(f"Invalid family: {spec!r} selects no family")
    return chosen


def lr_grid(lr_range: tuple, points: int) -> list[float]:
    """``points`` log-spaced learning rates over ``lr_range``, ends included."""
    low, high = lr_range
    if points == 1:
        return [math.sqrt(low * high)]
    return [float(f"{low * (high / low) ** (i / (points - 1)):.3g}") for i in range(points)]


def grid_configs(families: list[Family], lr_range: tuple, lr_points: int) -> list[dict]:
    """Every (family, params, lr) point a grid search visits, in a fixed order."""
    return [
        {"family": f.name, "params": params, "lr": lr}
        for f in families
        for params in f.grid()
        for lr in lr_grid(lr_range, lr_points)
    ]
