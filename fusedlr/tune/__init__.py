"""LR-policy benchmarking and tuning (LRBench++ on Optuna): compare schedule families on your own
training, search their parameters, resume and scale out. Needs ``pip install 'fusedlr[tune]'``.

    from fusedlr.tune import tune, best_schedule

    def train(trial):                       # your training, any model
        opt = fusedlr.AdamW(model.parameters(), lr=trial.lr, schedule=trial.schedule)
        for step in range(1, trial.steps + 1):
            ...
            if step % 50 == 0:
                trial.report(step, accuracy, loss=loss.item())   # records, prunes, stops divergence
        return accuracy

    study = tune(train, steps=2_000, families="all", n_trials=60, sampler="tpe", pruner="median",
                 storage="tune.db", target=0.95)
    lr, schedule = best_schedule(study)

``python -m fusedlr.tune run ...`` and ``python -m fusedlr.tune report --storage ...`` do the same
from the command line.
"""

try:
    import optuna  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised without the extra
    raise ImportError("fusedlr.tune needs Optuna: pip install 'fusedlr[tune]'") from error

from .repeats import run_repeats, summarize_repeats
from .report import best_policy_text, best_schedule, best_trial, csv_table, markdown_table, ranked_rows, schedule_of
from .runner import tune
from .space import CATEGORIES, FAMILIES, Family, Param, select_families
from .storage import DEFAULT_STORAGE, open_storage
from .trial import Diverged, TuneTrial

__all__ = [
    "tune",
    "TuneTrial",
    "Diverged",
    "FAMILIES",
    "CATEGORIES",
    "Family",
    "Param",
    "select_families",
    "open_storage",
    "DEFAULT_STORAGE",
    "ranked_rows",
    "markdown_table",
    "csv_table",
    "best_trial",
    "best_schedule",
    "best_policy_text",
    "schedule_of",
    "run_repeats",
    "summarize_repeats",
]
