"""Plots of a study (matplotlib): the best policies' lr curves above their metric curves, and the
best metric of every family."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState


def _pyplot():
    from .._pyplot import pyplot

    return pyplot("fusedlr.tune's plots", "tune")


def _best_per_family(study) -> list:
    sign = 1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1
    best: dict = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        family = t.user_attrs.get("family")
        if family and (family not in best or sign * t.value > sign * best[family].value):
            best[family] = t
    return sorted(best.values(), key=lambda t: -sign * t.value)


def plot_curves(study, path, top: int = 5, metric_name: str = "metric"):
    """lr curves (top panel) and metric curves (bottom) of the best trial of the ``top`` best families."""
    plt = _pyplot()
    trials = _best_per_family(study)[:top]
    figure, (ax_lr, ax_metric) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True)
    for t in trials:
        a = t.user_attrs
        label = f"#{t.number} {a['family']} ({t.value:.4f})"
        steps, lrs = zip(*a["lr_curve"]) if a.get("lr_curve") else ((), ())
        (line,) = ax_lr.plot(steps, lrs, linewidth=1.4, label=label)
        if a.get("metric_curve"):
            ms, values = zip(*a["metric_curve"])
            ax_metric.plot(ms, values, linewidth=1.4, color=line.get_color(), label=label)
    target = study.user_attrs.get("target")
    if target is not None:
        ax_metric.axhline(target, color="gray", linestyle="--", linewidth=1, label=f"target {target}")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_yscale("log")
    ax_lr.set_title(f"{study.study_name}: best policy of the {len(trials)} best families")
    ax_lr.legend(fontsize=7)
    ax_metric.set_ylabel(metric_name)
    ax_metric.set_xlabel("update")
    ax_metric.legend(fontsize=7)
    for ax in (ax_lr, ax_metric):
        ax.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_families(study, path, metric_name: str = "metric"):
    """Every complete trial's final metric by family (dots), the best of each family (bar)."""
    plt = _pyplot()
    by_family: dict = {}
    category: dict = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        family = t.user_attrs.get("family")
        if family:
            by_family.setdefault(family, []).append(t.value)
            category[family] = t.user_attrs.get("category", "")
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    best = {f: (max(v) if maximize else min(v)) for f, v in by_family.items()}
    order = sorted(best, key=lambda f: -best[f] if maximize else best[f])
    colors = {"fixed": "tab:gray", "decaying": "tab:blue", "cyclic": "tab:orange", "composite": "tab:green"}
    figure, ax = plt.subplots(figsize=(max(6, 0.6 * len(order) + 2), 4))
    xs = range(len(order))
    ax.bar(xs, [best[f] for f in order], color=[colors.get(category[f], "tab:purple") for f in order], alpha=0.6)
    for x, f in zip(xs, order):
        ax.scatter([x] * len(by_family[f]), by_family[f], s=10, color="black", zorder=3)
    values = [v for vs in by_family.values() for v in vs]
    if values:
        low = min(values)
        top = max(values)
        ax.set_ylim(low - 0.05 * (top - low + 1e-9), top + 0.05 * (top - low + 1e-9))
    ax.set_xticks(list(xs))
    ax.set_xticklabels([f"{f}\n({category[f]})" for f in order], rotation=45, ha="right", fontsize=7)
    ax.set_ylabel(f"final {metric_name}")
    ax.set_title(f"{study.study_name}: best {metric_name} per family (bars), every complete trial (dots)")
    ax.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
