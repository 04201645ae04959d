"""``python -m fusedlr.tune run ...`` (the packaged benchmark, or your own ``train``) and
``python -m fusedlr.tune report --storage ...`` (tables, plots and the best schedule of a study)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

import optuna

from . import plots, report
from .repeats import repeats_study_name, run_repeats, summarize_repeats
from .runner import PRUNERS, SAMPLERS, tune
from .storage import DEFAULT_STORAGE, open_storage


def _load_train(spec: str, optimizer: str):
    if spec == "digits":
        from .digits import make_train

        return make_train(optimizer)
    module, sep, name = spec.partition(":")
    if not sep:
        raise SystemExit(f"--train {spec!r}: expected 'digits' or MODULE:FUNCTION")
    sys.path.insert(0, os.getcwd())
    return getattr(importlib.import_module(module), name)


def claim_text(summary: list[dict]) -> str:
    """The seed's two claims, read off the repeats: final metric and steps to the target of the best
    non-fixed policy against the best fixed lr (means over the seeds)."""
    fixed = next((r for r in summary if r["category"] == "fixed"), None)
    others = [r for r in summary if r["category"] != "fixed"]
    if fixed is None or not others:
        return "no comparison: the repeats need the fixed category and another one\n"
    best = max(others, key=lambda r: r["final_mean"])
    lines = [
        f"best non-fixed policy: {best['family']} ({best['category']}): final {best['final_mean']:.4f} "
        f"± {best['final_std']:.4f} vs best fixed lr {fixed['final_mean']:.4f} ± {fixed['final_std']:.4f} "
        f"({100 * (best['final_mean'] - fixed['final_mean']):+.2f} points)"
    ]
    for r in others:
        if r["steps_to_target_mean"] and fixed["steps_to_target_mean"]:
            ratio = fixed["steps_to_target_mean"] / r["steps_to_target_mean"]
            speed = f"{ratio:.2f}x fewer" if ratio >= 1 else f"{1 / ratio:.2f}x more"
            lines.append(
                f"steps to target, {r['family']} ({r['category']}): {r['steps_to_target_mean']:.0f} vs fixed "
                f"{fixed['steps_to_target_mean']:.0f} ({speed}; missed {r['missed']}/{r['runs']} vs "
                f"{fixed['missed']}/{fixed['runs']})"
            )
    return "\n".join(lines) + "\n"


def write_report(study, out: str | None, *, storage=None, top: int = 5, quiet: bool = False) -> str:
    rows = report.ranked_rows(study)
    text = [f"## {study.study_name}: {len(rows)} finished trials\n", report.markdown_table(rows, limit=20)]
    try:
        text.append("\n" + report.best_policy_text(study))
    except ValueError as error:
        text.append(f"\n{error}\n")
    summary = None
    rname = repeats_study_name(study.study_name)
    if rname in {s.study_name for s in optuna.get_all_study_summaries(study._storage)}:
        summary = summarize_repeats(optuna.load_study(study_name=rname, storage=study._storage))
        if summary:
            text += ["\n### repeats of the best policy per category\n\n", report.repeats_markdown(summary),
                     "\n" + claim_text(summary)]  # fmt: skip
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "ranking.md"), "w") as f:
            f.write(report.markdown_table(rows))
        with open(os.path.join(out, "ranking.csv"), "w") as f:
            f.write(report.csv_table(rows))
        with open(os.path.join(out, "summary.md"), "w") as f:
            f.write("".join(text))
        try:
            lr, schedule = report.best_schedule(study)
            with open(os.path.join(out, "best_schedule.txt"), "w") as f:
                f.write(f"lr={lr!r}\nschedule={schedule!r}\n")
            plots.plot_curves(study, os.path.join(out, "curves.png"), top=top)
            plots.plot_families(study, os.path.join(out, "families.png"))
        except ValueError:
            pass  # no complete trial yet: tables only
        text.append(f"\nwrote {out}/ranking.md, ranking.csv, summary.md, best_schedule.txt, curves.png, families.png\n")
    result = "".join(text)
    if not quiet:
        print(result)
    return result


def _parser():
    parser = argparse.ArgumentParser(prog="python -m fusedlr.tune", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run, resume or join a study")
    run.add_argument("--train", default="digits", help="'digits' (the packaged benchmark) or MODULE:FUNCTION")
    run.add_argument("--optimizer", default="adamw", choices=("adamw", "lion"), help="digits benchmark only")
    run.add_argument("--families", default="all", help="names or categories: fixed,decaying,cyclic,composite")
    run.add_argument("--sampler", default="tpe", choices=SAMPLERS)
    run.add_argument("--pruner", default="median", choices=PRUNERS)
    run.add_argument("--trials", type=int, default=60, help="finished trials wanted, over all processes")
    run.add_argument("--steps", type=int, default=300, help="the step budget of every trial")
    run.add_argument("--storage", default=DEFAULT_STORAGE, help="a path (SQLite), a .journal file or a URL")
    run.add_argument("--study", default=None, help="study name (default: the --train name)")
    run.add_argument("--direction", default="maximize", choices=("maximize", "minimize"))
    run.add_argument("--target", type=float, default=None, help="metric target (digits: 0.95)")
    run.add_argument("--lr-min", type=float, default=1e-4)
    run.add_argument("--lr-max", type=float, default=1e-1)
    run.add_argument("--grid-lr-points", type=int, default=4)
    run.add_argument("--seed", type=int, default=0, help="training seed of every search trial")
    run.add_argument("--sampler-seed", type=int, default=None, help="fixes the sampler (one process)")
    run.add_argument("--fixed-sweep", type=int, default=None, help="queue N fixed lrs first (digits: 8)")
    run.add_argument("--balanced", action="store_true", help="categories take the trials in turn")
    run.add_argument("--repeats", type=int, default=0, help="then re-train each category's best with N seeds")
    run.add_argument(
        "--heartbeat", type=int, default=30, help="seconds (0: off); a dead worker's trial is retried after 2x"
    )
    run.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    run.add_argument("--out", default=None, help="write the report (tables, plots) to this folder")
    run.add_argument("--no-progress", action="store_true")
    rep = sub.add_parser("report", help="tables, plots and the best schedule of a stored study")
    rep.add_argument("--storage", default=DEFAULT_STORAGE)
    rep.add_argument("--study", default=None, help="default: the only search study in the storage")
    rep.add_argument("--out", default=None)
    rep.add_argument("--top", type=int, default=5, help="families drawn in curves.png")
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        import torch

        torch.set_num_threads(args.threads)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        train = _load_train(args.train, args.optimizer)
        study_name = args.study or args.train.replace(":", ".")
        target = args.target if args.target is not None else (0.95 if args.train == "digits" else None)
        sweep = args.fixed_sweep if args.fixed_sweep is not None else (8 if args.train == "digits" else 0)
        study = tune(train, steps=args.steps, families=args.families, n_trials=args.trials, sampler=args.sampler,
                     pruner=args.pruner, storage=args.storage, study_name=study_name, direction=args.direction,
                     target=target, lr_range=(args.lr_min, args.lr_max), grid_lr_points=args.grid_lr_points,
                     seed=args.seed, sampler_seed=args.sampler_seed, heartbeat_interval=args.heartbeat or None,
                     show_progress_bar=not args.no_progress, balanced=args.balanced,
                     fixed_sweep=sweep)  # fmt: skip
        if args.train == "digits":
            study.set_user_attr("optimizer", "AdamW" if args.optimizer == "adamw" else "Lion")
        if args.repeats:
            run_repeats(train, study, repeats=args.repeats, storage=args.storage, target=target,
                        show_progress_bar=not args.no_progress)  # fmt: skip
        write_report(study, args.out)
        return 0
    storage = open_storage(args.storage, heartbeat_interval=None)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage) if not s.study_name.endswith(".repeats")]
    if args.study is None:
        if len(names) != 1:
            raise SystemExit(f"--study: the storage holds {len(names)} studies ({', '.join(names)}): name one")
        args.study = names[0]
    write_report(optuna.load_study(study_name=args.study, storage=storage), args.out, top=args.top)
    return 0
