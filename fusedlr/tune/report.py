"""Reading a study back: the ranked table (Markdown, CSV) and the best policy as a schedule."""

from __future__ import annotations

import csv
import io
import json

import optuna
from optuna.trial import TrialState

from .. import schedules as S
from .space import FAMILIES

COLUMNS = ("rank", "trial", "state", "category", "family", "lr", "final_metric", "best_metric",
           "steps_to_target", "wall_time_s", "schedule", "note")  # fmt: skip


def _maximize(study) -> bool:
    return study.direction == optuna.study.StudyDirection.MAXIMIZE


def ranked_rows(study) -> list[dict]:
    """Every finished trial, best first: complete trials by value (ties: fewer steps to the target),
    then pruned trials by their last reported metric, then failed ones."""
    sign = -1 if _maximize(study) else 1
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state not in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
            continue
        a = t.user_attrs
        if "family" not in a:
            continue
        note = (
            a.get("pruned_reason")
            or a.get("error")
            or ("interrupted (process died)" if t.state == TrialState.FAIL else "")
        )
        rows.append({
            "trial": t.number, "state": t.state.name.lower(), "category": a.get("category"), "family": a["family"],
            "lr": a.get("lr"), "final_metric": a.get("final_metric"), "best_metric": a.get("best_metric"),
            "steps_to_target": a.get("steps_to_target"), "wall_time_s": a.get("wall_time"),
            "schedule": a.get("schedule"), "note": note, "_value": t.value,
        })  # fmt: skip
    state_order = {"complete": 0, "pruned": 1, "fail": 2}

    def key(r):
        metric = r["_value"] if r["state"] == "complete" else r["final_metric"]
        missing = metric is None or metric != metric
        to_target = r["steps_to_target"] if r["steps_to_target"] is not None else float("inf")
        return (state_order[r["state"]], missing, sign * metric if not missing else 0.0, to_target)

    rows.sort(key=key)
    for i, r in enumerate(rows, 1):
        r["rank"] = i
        del r["_value"]
    return rows


def _fmt(value, column: str) -> str:
    if value is None:
        return "-"
    if column == "lr":
        return f"{value:.3g}"
    if column in ("final_metric", "best_metric"):
        return f"{value:.4f}"
    if column == "wall_time_s":
        return f"{value:.1f}"
    return str(value)


def markdown_table(rows: list[dict], columns=COLUMNS, limit: int | None = None) -> str:
    shown = rows[:limit] if limit else rows
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in shown:
        cells = [_fmt(r.get(c), c).replace("|", "\\|") for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_table(rows: list[dict], columns=COLUMNS) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in columns})
    return out.getvalue()


def best_trial(study, category: str | None = None):
    """The best complete trial (of one category, if given)."""
    sign = 1 if _maximize(study) else -1
    best = None
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if category is not None and t.user_attrs.get("category") != category:
            continue
        if best is None or sign * t.value > sign * best.value:
            best = t
    if best is None:
        raise ValueError(f"no complete trial{' of category ' + category if category else ''} in {study.study_name!r}")
    return best


def schedule_of(trial) -> tuple[float, S.Schedule]:
    """``(lr, schedule)`` of a trial, rebuilt from its family and parameters: a ready fusedlr schedule."""
    a = trial.user_attrs
    return float(a["lr"]), FAMILIES[a["family"]].build(a["params"], int(a["steps"]))


def best_schedule(study, category: str | None = None) -> tuple[float, S.Schedule]:
    """``(lr, schedule)`` of the best trial: ``fusedlr.AdamW(params, lr=lr, schedule=schedule)``."""
    return schedule_of(best_trial(study, category))


def best_policy_text(study) -> str:
    """The best policy in words and as code (``fusedlr.AdamW`` unless the study recorded another
    optimizer in its ``optimizer`` user attribute, as the digits benchmark does)."""
    optimizer = study.user_attrs.get("optimizer", "AdamW")
    t = best_trial(study)
    lr, schedule = schedule_of(t)
    a = t.user_attrs
    return (
        f"best trial {t.number}: {a['family']} ({a['category']}), final metric {t.value:.4f}, "
        f"steps to target {a.get('steps_to_target')}\n"
        f"params: {json.dumps(a['params'], sort_keys=True)}\n"
        f"fusedlr.{optimizer}(model.parameters(), lr={lr!r}, schedule=fusedlr.schedules.{schedule!r})\n"
    )


def repeats_markdown(summary: list[dict]) -> str:
    lines = [
        "| category | family | lr | runs | final metric mean ± std (min-max) | steps to target mean ± std | missed |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in summary:
        to_target = (
            f"{r['steps_to_target_mean']:.0f} ± {r['steps_to_target_std']:.0f}"
            if r["steps_to_target_mean"] is not None
            else "-"
        )
        lines.append(
            f"| {r['category']} | {r['family']} | {r['lr']:.3g} | {r['runs']} | "
            f"{r['final_mean']:.4f} ± {r['final_std']:.4f} ({r['final_min']:.4f}-{r['final_max']:.4f}) | "
            f"{to_target} | {r['missed']} |"
        )
    return "\n".join(lines) + "\n"
