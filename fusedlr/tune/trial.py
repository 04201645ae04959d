"""What the user's ``train(trial)`` receives: the policy to train with, and where to report."""

from __future__ import annotations

import math
import time

import optuna

from .. import schedules as S

LR_CURVE_POINTS = 200  # lr values kept per trial for the plots (evenly spaced over the budget)


class Diverged(optuna.TrialPruned):
    """Raised by ``report`` when the loss or the metric is not finite: the trial ends as pruned."""


class TuneTrial:
    """One policy under evaluation.

    ``lr`` and ``schedule`` are what the optimizer is built with
    (``fusedlr.AdamW(model.parameters(), lr=trial.lr, schedule=trial.schedule)``, or
    ``trial.optimizer(model.parameters())``); ``steps`` is the budget the schedule was built for;
    ``seed`` is the seed to train with (fixed across a search so policies compete on the same
    data order and initialisation; varied by repeats). Call ``report(step, metric, loss=...)`` as
    training goes: it records the curves, prunes poor trials (Optuna's pruner) and ends diverging
    ones (a non-finite loss or metric).
    """

    def __init__(self, trial, family: str, category: str, params: dict, lr: float, schedule: S.Schedule, *,
                 steps: int, seed: int, direction: str, target: float | None):  # fmt: skip
        self.optuna_trial = trial
        self.family, self.category, self.params = family, category, dict(params)
        self.lr, self.schedule, self.steps, self.seed = float(lr), schedule, int(steps), int(seed)
        self.direction, self.target = direction, target
        self.metric_curve: list[list[float]] = []
        self.loss_curve: list[list[float]] = []
        self.started = time.perf_counter()

    @property
    def number(self) -> int:
        return self.optuna_trial.number

    def optimizer(self, params, cls=None, **kwargs):
        """``cls(params, lr=self.lr, schedule=self.schedule, **kwargs)``; ``cls`` defaults to fusedlr.AdamW."""
        if cls is None:
            from ..optim import AdamW as cls
        return cls(params, lr=self.lr, schedule=self.schedule, **kwargs)

    def lr_at(self, step: int) -> float:
        return self.schedule.lr(step, self.lr)

    def report(self, step: int, metric: float, *, loss: float | None = None) -> None:
        """Record ``metric`` after ``step`` updates; raise ``optuna.TrialPruned`` to stop the trial."""
        step, metric = int(step), float(metric)
        if loss is not None:
            loss = float(loss)
            self.loss_curve.append([step, loss])
        if (loss is not None and not math.isfinite(loss)) or not math.isfinite(metric):
            what = f"loss {loss}" if loss is not None and not math.isfinite(loss) else f"metric {metric}"
            raise Diverged(f"diverged: non-finite {what} at step {step}")
        self.metric_curve.append([step, metric])
        self.optuna_trial.report(metric, step)
        if self.optuna_trial.should_prune():
            pruner = type(self.optuna_trial.study.pruner).__name__
            raise optuna.TrialPruned(f"pruned by {pruner} at step {step} (metric {metric:.6g})")

    # ----- what is recorded ------------------------------------------------------------------------

    def better(self, a: float, b: float) -> bool:
        return a > b if self.direction == "maximize" else a < b

    def best_metric(self) -> float | None:
        best = None
        for _, value in self.metric_curve:
            if best is None or self.better(value, best):
                best = value
        return best

    def steps_to_target(self) -> int | None:
        """The first reported step at which the metric reached the target (the seed's iterations-to-target)."""
        if self.target is None:
            return None
        for step, value in self.metric_curve:
            if value == self.target or self.better(value, self.target):
                return int(step)
        return None

    def lr_curve(self) -> list[list[float]]:
        stride = max(1, self.steps // LR_CURVE_POINTS)
        steps = sorted(set(range(0, self.steps, stride)) | {self.steps - 1})
        return [[k, self.lr_at(k)] for k in steps if k >= 0]

    def records(self) -> dict:
        return {
            "final_metric": self.metric_curve[-1][1] if self.metric_curve else None,
            "best_metric": self.best_metric(),
            "steps_to_target": self.steps_to_target(),
            "wall_time": time.perf_counter() - self.started,
            "metric_curve": self.metric_curve,
            "loss_curve": self.loss_curve,
            "lr_curve": self.lr_curve(),
        }
