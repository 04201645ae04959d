"""The study: Optuna draws policies, the user's ``train(trial)`` evaluates them, records are kept."""

from __future__ import annotations

import math
import os
import socket
import traceback

import optuna
from optuna.trial import TrialState

from .space import CATEGORIES, FAMILIES, grid_configs, lr_grid, select_families
from .storage import open_storage
from .trial import Diverged, TuneTrial

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("none", "median", "halving", "hyperband")


def make_sampler(kind: str, *, grid: list | None = None, seed: int | None = None):
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=10)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "grid":
        return optuna.samplers.GridSampler({"grid_point": list(range(len(grid)))}, seed=seed)
    raise ValueError(f"Invalid sampler: {kind!r} (expected one of {', '.join(SAMPLERS)})")


def make_pruner(kind: str, steps: int):
    """Pruners judge the metric reported at a step against other trials at that step."""
    # nothing is pruned in its first quarter: cyclic and warmup policies start low on purpose
    first = max(1, steps // 4)
    if kind == "none":
        return optuna.pruners.NopPruner()
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=8, n_warmup_steps=first)
    if kind == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first, reduction_factor=3)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=first, max_resource=steps, reduction_factor=3)
    raise ValueError(f"Invalid pruner: {kind!r} (expected one of {', '.join(PRUNERS)})")


def counts_toward_budget(trial) -> bool:
    """Finished on its own: complete, pruned, or failed by an exception of ``train``. A trial whose
    process died (failed by the heartbeat, no ``error`` recorded) is re-run, so it does not count."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and "error" in trial.user_attrs


def finished(study) -> int:
    return sum(counts_toward_budget(t) for t in study.get_trials(deepcopy=False))


class _StopAtBudget:
    """Stops this process once the whole study (every process) has ``n_trials`` finished trials."""

    def __init__(self, n_trials: int):
        self.n_trials = n_trials

    def __call__(self, study, trial):
        if finished(study) >= self.n_trials:
            study.stop()


def make_objective(train, *, families, steps: int, lr_range, grid, direction: str, target, seed: int,
                   balanced: bool = False):  # fmt: skip
    categories = [c for c in CATEGORIES if any(f.category == c for f in families)]

    def draw(trial) -> dict:
        config = trial.user_attrs.get("config")  # an enqueued policy (repeats, re-evaluations)
        if config is not None:
            return config
        if grid is not None:
            return grid[trial.suggest_categorical("grid_point", list(range(len(grid))))]
        if balanced:  # categories in turn, so that each gets its share of the trials whatever the sampler likes
            # a retried trial (its worker died) already holds its family: keep its category
            held = [name.split(".", 1)[1] for name in trial.params if name.startswith("family.")]
            category = held[0] if held else categories[trial.number % len(categories)]
            names = [f.name for f in families if f.category == category]
            family = FAMILIES[trial.suggest_categorical(f"family.{category}", names)]
        else:
            family = FAMILIES[trial.suggest_categorical("family", [f.name for f in families])]
        params = family.suggest(trial)
        lr = trial.suggest_float(f"{family.name}.lr", *lr_range, log=True)
        return {"family": family.name, "params": params, "lr": lr}

    def objective(trial):
        config = draw(trial)
        family = FAMILIES[config["family"]]
        budget = int(config.get("steps", steps))
        schedule = family.build(config["params"], budget)
        trial_seed = int(trial.user_attrs.get("seed", seed))
        attrs = {"family": family.name, "category": family.category, "params": config["params"],
                 "lr": config["lr"], "steps": budget, "seed": trial_seed, "schedule": repr(schedule),
                 "worker": f"{socket.gethostname()}:{os.getpid()}"}  # fmt: skip
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        run = TuneTrial(trial, family.name, family.category, config["params"], config["lr"], schedule,
                        steps=budget, seed=trial_seed, direction=direction, target=target)  # fmt: skip
        try:
            result = train(run)
            value = float(result) if result is not None else run.records()["final_metric"]
            if value is None:
                raise ValueError("train(trial) returned no metric and reported none")
            if not math.isfinite(value):
                raise Diverged(f"diverged: train(trial) returned {value}")
        except optuna.TrialPruned as pruned:
            _save(trial, run, pruned_reason=str(pruned) or "pruned")
            raise
        except Exception as error:
            tail = "".join(traceback.format_exception(type(error), error, error.__traceback__)[-3:])
            _save(trial, run, error=f"{type(error).__name__}: {error}", traceback=tail[-2000:])
            raise
        _save(trial, run)
        return value

    return objective


def _save(trial, run: TuneTrial, **extra) -> None:
    for key, value in {**run.records(), **extra}.items():
        trial.set_user_attr(key, value)


def tune(
    train,
    *,
    steps: int,
    families="all",
    n_trials: int | None = 50,
    sampler: str = "tpe",
    pruner: str = "median",
    storage: str | None = None,
    study_name: str = "fusedlr-tune",
    direction: str = "maximize",
    target: float | None = None,
    lr_range: tuple = (1e-4, 1e-1),
    grid_lr_points: int = 4,
    seed: int = 0,
    sampler_seed: int | None = None,
    heartbeat_interval: int | None = 30,
    grace_period: int | None = None,
    show_progress_bar: bool = True,
    fixed_sweep: int = 0,
    balanced: bool = False,
):
    """Run (or resume, or join) a study of lr policies over ``train(trial)``; returns the Optuna study.

    ``train`` builds its optimizer with ``trial.lr`` and ``trial.schedule``, trains for at most
    ``trial.steps`` updates with seed ``trial.seed``, calls ``trial.report(step, metric, loss=...)``
    as it goes and returns the final metric (or None: the last reported one). ``n_trials`` counts
    finished trials over every process sharing the study (None with the grid: the whole grid).
    ``seed`` is the training seed, the same for every trial; ``sampler_seed`` fixes the sampler
    (leave it None when several processes share a study, or give each its own).
    ``fixed_sweep`` queues that many fixed-lr trials, log-spaced over ``lr_range``, before the
    sampler's own draws: the baseline the seed compares with is then a tuned fixed lr.
    ``balanced`` gives the categories (fixed, decaying, cyclic, composite) the trials in turn, so a
    model-based sampler cannot starve a category that starts slowly.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"Invalid steps: {steps!r} (expected a positive int)")
    if direction not in ("maximize", "minimize"):
        raise ValueError(f"Invalid direction: {direction!r} (expected 'maximize' or 'minimize')")
    low, high = lr_range
    if not (0 < low < high and math.isfinite(high)):
        raise ValueError(f"Invalid lr_range: {lr_range!r} (expected 0 < low < high)")
    chosen = select_families(families)
    grid = grid_configs(chosen, lr_range, grid_lr_points) if sampler == "grid" else None
    study = optuna.create_study(
        storage=open_storage(storage, heartbeat_interval=heartbeat_interval, grace_period=grace_period),
        study_name=study_name,
        direction=direction,
        sampler=make_sampler(sampler, grid=grid, seed=sampler_seed),
        pruner=make_pruner(pruner, steps),
        load_if_exists=True,
    )
    for key, value in {"steps": steps, "target": target, "families": [f.name for f in chosen],
                       "sampler": sampler, "pruner": pruner, "lr_range": list(lr_range)}.items():  # fmt: skip
        study.set_user_attr(key, value)
    if n_trials is None:
        if grid is None:
            raise ValueError("Invalid n_trials: None (only the grid sampler has a natural end)")
        n_trials = len(grid)
    if fixed_sweep:
        _enqueue_fixed_sweep(study, lr_range, fixed_sweep)
    remaining = n_trials - finished(study)
    if remaining > 0:
        objective = make_objective(train, families=chosen, steps=steps, lr_range=lr_range, grid=grid,
                                   direction=direction, target=target, seed=seed, balanced=balanced)  # fmt: skip
        study.optimize(objective, n_trials=remaining, catch=(Exception,), callbacks=[_StopAtBudget(n_trials)],
                       show_progress_bar=show_progress_bar)  # fmt: skip
    return study


def _enqueue_fixed_sweep(study, lr_range, points: int) -> None:
    queued = {
        t.user_attrs["config"]["lr"]
        for t in study.get_trials(deepcopy=False)
        if "config" in t.user_attrs and t.user_attrs["config"]["family"] == "fixed"
    }
    for lr in lr_grid(lr_range, points):
        if lr not in queued:
            study.enqueue_trial({}, user_attrs={"config": {"family": "fixed", "params": {}, "lr": lr}})
