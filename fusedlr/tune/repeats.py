"""Re-run the best policy of each category with other seeds, to show the spread behind a ranking.

The repeats are a second Optuna study beside the search (``<study>.repeats``) whose trials are
enqueued with a fixed policy and seed, so they survive a crash and resume like the search.
"""

from __future__ import annotations

import statistics

import optuna
from optuna.trial import TrialState

from .runner import make_objective
from .storage import open_storage


def best_per_category(study) -> dict:
    """The best complete trial of each category (fixed, decaying, cyclic, composite) of a search."""
    best: dict = {}
    sign = 1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        category = t.user_attrs.get("category")
        if category and (category not in best or sign * t.value > sign * best[category].value):
            best[category] = t
    return best


def config_of(trial) -> dict:
    a = trial.user_attrs
    return {"family": a["family"], "params": a["params"], "lr": a["lr"], "steps": a["steps"]}


def repeats_study_name(study_name: str) -> str:
    return f"{study_name}.repeats"


def run_repeats(train, study, *, repeats: int, storage=None, seeds=None, target=None, show_progress_bar=True):
    """Train the best policy of every category with ``repeats`` seeds (1, 2, ... unless given)."""
    seeds = list(seeds) if seeds is not None else list(range(1, repeats + 1))
    best = best_per_category(study)
    direction = "maximize" if study.direction == optuna.study.StudyDirection.MAXIMIZE else "minimize"
    rstudy = optuna.create_study(
        storage=open_storage(storage, heartbeat_interval=None),
        study_name=repeats_study_name(study.study_name),
        direction=direction,
        sampler=optuna.samplers.RandomSampler(),  # enqueued trials draw nothing
        pruner=optuna.pruners.NopPruner(),
        load_if_exists=True,
    )
    present = {
        (t.user_attrs.get("category"), t.user_attrs.get("seed"))
        for t in rstudy.get_trials(deepcopy=False)
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.WAITING)
    }
    queued = 0
    for category, trial in best.items():
        for seed in seeds:
            if (category, seed) not in present:
                config = config_of(trial)
                rstudy.enqueue_trial({}, user_attrs={"config": config, "seed": seed, "category": category})
                queued += 1
    if queued:
        steps = study.user_attrs.get("steps", 1)
        objective = make_objective(train, families=[], steps=steps, lr_range=None, grid=None,
                                   direction=direction, target=target, seed=0)  # fmt: skip
        rstudy.optimize(objective, n_trials=queued, catch=(Exception,), show_progress_bar=show_progress_bar)
    return rstudy


def summarize_repeats(rstudy) -> list[dict]:
    """Per category: the policy, and mean / standard deviation / min / max of the final metric and
    of the steps to the target over the repeats (misses counted apart)."""
    rows: dict = {}
    for t in rstudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        a = t.user_attrs
        first = dict(category=a["category"], family=a["family"], lr=a["lr"], schedule=a["schedule"])
        row = rows.setdefault(a["category"], dict(first, finals=[], to_target=[], missed=0))
        row["finals"].append(a.get("final_metric") if t.state == TrialState.COMPLETE else float("nan"))
        if a.get("steps_to_target") is None:
            row["missed"] += 1
        else:
            row["to_target"].append(a["steps_to_target"])
    out = []
    for row in rows.values():
        finals, hits = row.pop("finals"), row.pop("to_target")
        row.update(runs=len(finals), final_mean=statistics.fmean(finals), final_std=_std(finals),
                   final_min=min(finals), final_max=max(finals),
                   steps_to_target_mean=statistics.fmean(hits) if hits else None,
                   steps_to_target_std=_std(hits) if hits else None)  # fmt: skip
        out.append(row)
    order = {"fixed": 0, "decaying": 1, "cyclic": 2, "composite": 3}
    return sorted(out, key=lambda r: order.get(r["category"], 9))


def _std(values) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0
