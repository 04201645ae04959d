"""The packaged digits benchmark, shrunk: its train function learns, reports and is reproducible."""

import pytest

optuna = pytest.importorskip("optuna")
pytest.importorskip("sklearn")

from fusedlr.tune import tune  # noqa: E402
from fusedlr.tune.digits import EVAL_EVERY, load, make_train  # noqa: E402


def test_digits_dataset_ships_with_scikit_learn():
    x_train, y_train, x_val, y_val = load()
    assert x_train.shape[1] == x_val.shape[1] == 64 and len(y_train) + len(y_val) == 1797
    assert set(y_val.tolist()) == set(range(10))


@pytest.mark.parametrize("optimizer", ["adamw", "lion"])
def test_digits_trials_learn_and_repeat_exactly(tmp_path, optimizer):
    lr = 3e-3 if optimizer == "adamw" else 3e-4
    options = dict(steps=60, families="fixed", n_trials=1, sampler="random", pruner="none", target=0.5,
                   heartbeat_interval=None, show_progress_bar=False, lr_range=(lr, lr * 1.0001))  # fmt: skip
    train = make_train(optimizer)
    first = tune(train, storage=str(tmp_path / "a.db"), **options).trials[0]
    again = tune(train, storage=str(tmp_path / "b.db"), **options).trials[0]
    curve = first.user_attrs["metric_curve"]
    assert [s for s, _ in curve] == list(range(EVAL_EVERY, 61, EVAL_EVERY))
    assert curve[-1][1] > 0.6, curve  # ten classes: chance is 0.1
    assert first.user_attrs["steps_to_target"] is not None
    assert again.user_attrs["metric_curve"] == curve  # same seed, same policy: the same run


def test_unknown_optimizer_is_refused():
    with pytest.raises(ValueError, match="Invalid optimizer"):
        make_train("sgd")
