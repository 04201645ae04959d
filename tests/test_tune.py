"""fusedlr.tune in one process: families, samplers, pruners, per-trial records, reports, plots."""

import csv
import io
import math
import subprocess
import sys

import pytest
import torch

optuna = pytest.importorskip("optuna")

import tune_toy  # noqa: E402

import fusedlr  # noqa: E402
from fusedlr import schedules as S  # noqa: E402
from fusedlr.tune import report as R  # noqa: E402
from fusedlr.tune import space, tune  # noqa: E402
from fusedlr.tune.runner import finished  # noqa: E402

TrialState = optuna.trial.TrialState


def _run(tmp_path, train=tune_toy.train, **kwargs):
    options = dict(steps=60, n_trials=8, sampler="random", pruner="none", storage=str(tmp_path / "study.db"),
                   sampler_seed=0, heartbeat_interval=None, show_progress_bar=False, target=0.9)  # fmt: skip
    options.update(kwargs)
    return tune(train, **options)


def test_import_fusedlr_imports_no_optional_package():
    """Beyond what torch itself loads (torch may pull tqdm in), ``import fusedlr`` loads none of them."""
    code = (
        "import sys, importlib.util\n"
        "import torch\n"
        "if importlib.util.find_spec('triton'): import triton\n"
        "names = ('optuna', 'matplotlib', 'tqdm', 'sklearn', 'sqlalchemy', 'psycopg2')\n"
        "before = {m for m in names if m in sys.modules}\n"
        "import fusedlr\n"
        "print(sorted(m for m in names if m in sys.modules and m not in before))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_family_builds_finite_schedules_over_its_grid_and_its_ranges():
    """Each category is represented; grid points and random draws all make valid, finite schedules."""
    assert {f.category for f in space.FAMILIES.values()} == set(space.CATEGORIES)
    sampler_study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for family in space.FAMILIES.values():
        draws = family.grid() + [family.suggest(sampler_study.ask()) for _ in range(5)]
        for params in draws:
            for steps in (1, 7, 300):
                schedule = family.build(params, steps)
                values = [schedule.lr(k, 1.0) for k in range(0, steps + 5)]
                assert all(math.isfinite(v) and v >= 0.0 for v in values), (family.name, params, steps)
                assert max(values) > 0.0


def test_select_families_by_name_and_category():
    assert [f.name for f in space.select_families("fixed,sine")] == ["fixed", "sine"]
    assert {f.category for f in space.select_families("cyclic")} == {"cyclic"}
    with pytest.raises(ValueError, match="Invalid family: 'cosin'"):
        space.select_families("cosin")


def test_records_of_every_trial(tmp_path):
    study = _run(tmp_path, families="fixed,polynomial,sine,warmup_constant_decay")
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 8
    for t in trials:
        a = t.user_attrs
        curve = a["metric_curve"]
        assert [s for s, _ in curve] == list(range(10, 61, 10))
        assert a["final_metric"] == curve[-1][1] == t.value
        assert a["best_metric"] == max(v for _, v in curve)
        hit = next((s for s, v in curve if v >= 0.9), None)
        assert a["steps_to_target"] == hit
        assert a["wall_time"] > 0
        # the lr curve is the optimizer's: the schedule rebuilt from the stored params, at the stored lr
        lr, schedule = R.schedule_of(t)
        assert lr == a["lr"] and repr(schedule) == a["schedule"]
        assert a["lr_curve"] == [[k, schedule.lr(k, lr)] for k in range(60)]
        assert a["category"] == space.FAMILIES[a["family"]].category


def test_divergence_is_pruned_with_its_reason_and_errors_do_not_lose_other_trials(tmp_path):
    def train(trial):
        if trial.family == "sine":
            raise RuntimeError("CUDA out of memory (simulated)")
        if trial.family == "fixed":
            trial.report(10, 0.5, loss=1.0)
            trial.report(20, 0.1, loss=float("nan"))
        return tune_toy.train(trial)

    study = _run(tmp_path, train=train, families="fixed,sine,polynomial", n_trials=12)
    by_family = {}
    for t in study.get_trials():
        by_family.setdefault(t.user_attrs["family"], []).append(t)
    assert finished(study) == 12 and set(by_family) == {"fixed", "sine", "polynomial"}
    for t in by_family["fixed"]:
        assert t.state == TrialState.PRUNED
        assert t.user_attrs["pruned_reason"] == "diverged: non-finite loss nan at step 20"
        assert t.user_attrs["metric_curve"] == [[10, 0.5]]
    for t in by_family["sine"]:
        assert t.state == TrialState.FAIL
        assert t.user_attrs["error"] == "RuntimeError: CUDA out of memory (simulated)"
        assert "simulated" in t.user_attrs["traceback"]
    assert all(t.state == TrialState.COMPLETE for t in by_family["polynomial"])
    rows = R.ranked_rows(study)
    assert [r["state"] for r in rows] == sorted((r["state"] for r in rows), key=["complete", "pruned", "fail"].index)
    assert any("diverged" in r["note"] for r in rows) and any("out of memory" in r["note"] for r in rows)


def test_a_non_finite_return_value_is_divergence(tmp_path):
    study = _run(tmp_path, train=lambda trial: float("inf"), families="fixed", n_trials=2)
    assert {t.state for t in study.trials} == {TrialState.PRUNED}
    assert study.trials[0].user_attrs["pruned_reason"] == "diverged: train(trial) returned inf"


def test_grid_sampler_visits_every_point_once_and_stops(tmp_path):
    families = space.select_families("fixed,exponential")
    grid = space.grid_configs(families, (1e-3, 1e-1), 3)
    assert len(grid) == 3 * (1 + 2)
    study = _run(tmp_path, families="fixed,exponential", sampler="grid", n_trials=None, lr_range=(1e-3, 1e-1),
                 grid_lr_points=3)  # fmt: skip
    seen = sorted((t.user_attrs["family"], t.user_attrs["lr"], str(t.user_attrs["params"])) for t in study.trials)
    assert len(study.trials) == len(grid) == len(set(seen))
    assert sorted((g["family"], g["lr"], str(g["params"])) for g in grid) == seen
    assert space.lr_grid((1e-3, 1e-1), 3) == [1e-3, 1e-2, 1e-1]


def test_tpe_prefers_the_better_region(tmp_path):
    """TPE over the toy: after its random start-up it draws mostly decaying policies (they win here)."""
    study = _run(tmp_path, families="fixed,polynomial", sampler="tpe", n_trials=30, steps=30)
    late = [t.user_attrs["family"] for t in study.trials[15:]]
    assert late.count("polynomial") > late.count("fixed")
    assert R.best_trial(study).user_attrs["family"] == "polynomial"


@pytest.mark.parametrize("pruner", ["median", "halving", "hyperband"])
def test_pruners_stop_poor_trials(tmp_path, pruner):
    def train(trial):  # a tiny lr learns nothing: such trials must be cut early
        return tune_toy.train(trial)

    study = _run(tmp_path, train=train, families="fixed", pruner=pruner, n_trials=16, steps=80, lr_range=(1e-6, 1e-1))
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned, "no trial was pruned"
    for t in pruned:
        assert t.user_attrs["pruned_reason"].startswith("pruned by ")
        assert t.user_attrs["metric_curve"][-1][0] < 80
    assert finished(study) == 16


def test_resume_counts_finished_trials(tmp_path):
    study = _run(tmp_path, n_trials=4, families="fixed")
    assert len(study.trials) == 4
    study = _run(tmp_path, n_trials=6, families="fixed")
    assert len(study.trials) == 6 and finished(study) == 6
    study = _run(tmp_path, n_trials=6, families="fixed")
    assert len(study.trials) == 6


def test_journal_file_storage(tmp_path):
    study = _run(tmp_path, storage=str(tmp_path / "study.journal"), n_trials=3, families="sine")
    assert finished(study) == 3
    again = optuna.load_study(
        study_name="fusedlr-tune", storage=fusedlr.tune.open_storage(str(tmp_path / "study.journal"))
    )
    assert [t.value for t in again.trials] == [t.value for t in study.trials]


def test_reports_tables_and_best_schedule_plug_into_adamw(tmp_path):
    study = _run(tmp_path, n_trials=10, families="fixed,polynomial,cyclic_then_decay")
    rows = R.ranked_rows(study)
    values = [r["final_metric"] for r in rows if r["state"] == "complete"]
    assert values == sorted(values, reverse=True) and [r["rank"] for r in rows] == list(range(1, 11))
    markdown = R.markdown_table(rows)
    assert markdown.count("\n") == 12 and markdown.startswith("| rank | trial | state |")
    parsed = list(csv.DictReader(io.StringIO(R.csv_table(rows))))
    assert len(parsed) == 10 and float(parsed[0]["final_metric"]) == rows[0]["final_metric"]
    assert parsed[0]["schedule"] == rows[0]["schedule"]

    lr, schedule = R.best_schedule(study)
    best = R.best_trial(study)
    assert isinstance(schedule, S.Schedule) and lr == best.user_attrs["lr"]
    text = R.best_policy_text(study)
    assert f"schedule=fusedlr.schedules.{schedule!r}" in text
    # the text form is a working expression, and the object drives fusedlr.AdamW to the recorded lrs
    assert eval(repr(schedule), vars(S)) == schedule  # noqa: S307 - our own repr
    probe = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = fusedlr.AdamW([probe], lr=lr, betas=(0.0, 0.0), eps=0.0, weight_decay=0.0, schedule=schedule)
    recorded = dict(best.user_attrs["lr_curve"])
    previous = 0.0
    for k in range(20):
        probe.grad = torch.ones_like(probe)
        opt.step()
        assert previous - float(probe.detach()) == pytest.approx(recorded[k], rel=1e-9, abs=1e-15)
        previous = float(probe.detach())


def test_plots_and_report_command(tmp_path):
    pytest.importorskip("matplotlib")
    from fusedlr.tune import plots

    study = _run(tmp_path, n_trials=6, families="fixed,sine,step")
    for draw, name in ((plots.plot_curves, "curves.png"), (plots.plot_families, "families.png")):
        path = tmp_path / name
        draw(study, path)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = tmp_path / "report"
    done = subprocess.run(
        [sys.executable, "-m", "fusedlr.tune", "report", "--storage", str(tmp_path / "study.db"), "--out", str(out)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "| rank | trial |" in done.stdout and "fusedlr.AdamW(model.parameters(), lr=" in done.stdout
    assert {p.name for p in out.iterdir()} == {"ranking.md", "ranking.csv", "summary.md", "best_schedule.txt",
                                               "curves.png", "families.png"}  # fmt: skip


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(steps=0), "Invalid steps"),
        (dict(direction="up"), "Invalid direction"),
        (dict(lr_range=(1e-2, 1e-3)), "Invalid lr_range"),
        (dict(sampler="cmaes"), "Invalid sampler"),
        (dict(pruner="patient"), "Invalid pruner"),
        (dict(n_trials=None), "Invalid n_trials"),
    ],
)
def test_invalid_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _run(tmp_path, **kwargs)


def test_balanced_gives_every_category_its_turn(tmp_path):
    study = _run(tmp_path, families="fixed,polynomial,sine,fixed_then_step", sampler="tpe", balanced=True,
                 n_trials=12, fixed_sweep=2)  # fmt: skip
    categories = [t.user_attrs["category"] for t in study.trials]
    assert categories[:2] == ["fixed", "fixed"]  # the queued fixed-lr sweep runs first
    assert all(t.user_attrs["lr"] in (1e-4, 1e-1) for t in study.trials[:2])
    turns = {c: categories[2:].count(c) for c in set(categories[2:])}
    assert turns == {"fixed": 2, "decaying": 2, "cyclic": 3, "composite": 3}  # trials 2..11, category = number % 4
