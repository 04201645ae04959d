"""Toy ``train(trial)`` functions for the fusedlr.tune tests: no model, an analytic metric.

The metric rises with the lr spent so far and is held back by a high lr at the time of the
measurement, so decaying policies beat a fixed lr here, by construction: the tests check the
machinery, not the seed's claim (the digits benchmark does that).
"""

import math
import os
import time


def _metric(spent, lr_now):
    return (1 - math.exp(-spent / 0.5)) * (1 - 0.5 * lr_now / (lr_now + 0.01))


def train(trial):
    spent, metric = 0.0, 0.0
    for step in range(1, trial.steps + 1):
        lr = trial.lr_at(step - 1)
        spent += lr
        if step % 10 == 0:
            metric = _metric(spent, lr)
            trial.report(step, metric, loss=1 - metric)
    return metric


def _meet(barrier: str, parties: int) -> None:
    """Wait (once per process, at most a minute) until ``parties`` processes have reached here, so
    that workers started together really overlap however slowly each one imports torch."""
    os.makedirs(barrier, exist_ok=True)
    mark = os.path.join(barrier, str(os.getpid()))
    if os.path.exists(mark):
        return
    open(mark, "w").close()
    deadline = time.time() + 60
    while len(os.listdir(barrier)) < parties and time.time() < deadline:
        time.sleep(0.05)


def slow_train(trial):
    """``train`` that takes a while, so that processes overlap and can be killed mid-trial."""
    if os.environ.get("TOY_BARRIER"):
        _meet(os.environ["TOY_BARRIER"], int(os.environ.get("TOY_PARTIES", "2")))
    time.sleep(float(os.environ.get("TOY_SLEEP", "0.3")))
    return train(trial)
