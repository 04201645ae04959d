"""The packaged benchmark: a small MLP on scikit-learn's digits (1,797 8x8 images, shipped inside
scikit-learn: nothing is downloaded), trained on the CPU with fusedlr's optimizers.

``train(trial)`` is an ordinary user function: it builds ``fusedlr.AdamW`` (or ``Lion``) with the
trial's lr and schedule, trains for ``trial.steps`` minibatch updates with seed ``trial.seed``,
and reports the validation accuracy every ``EVAL_EVERY`` updates.
"""

from __future__ import annotations

from functools import lru_cache

import torch

BATCH_SIZE = 32
HIDDEN = 64
EVAL_EVERY = 10


@lru_cache(maxsize=1)
def load():
    """Standardised features, split 70/30 (stratified, fixed): the same for every trial and seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    train_idx, val_idx = train_test_split(range(len(y)), test_size=0.3, random_state=0, stratify=digits.target)
    x_train, x_val = x[train_idx], x[val_idx]
    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-3)
    return (x_train - mean) / std, y[train_idx], (x_val - mean) / std, y[val_idx]


def make_train(optimizer: str = "adamw", weight_decay: float = 1e-4):
    """A ``train(trial)`` for the study; ``optimizer`` is ``"adamw"`` or ``"lion"``."""
    if optimizer not in ("adamw", "lion"):
        raise ValueError(f"Invalid optimizer: {optimizer!r} (expected 'adamw' or 'lion')")

    def train(trial):
        import fusedlr

        x_train, y_train, x_val, y_val = load()
        torch.manual_seed(trial.seed)
        model = torch.nn.Sequential(torch.nn.Linear(64, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, 10))
        cls = fusedlr.AdamW if optimizer == "adamw" else fusedlr.Lion
        opt = trial.optimizer(model.parameters(), cls=cls, weight_decay=weight_decay, backend="torch")
        order = torch.Generator().manual_seed(trial.seed)
        batches = torch.empty(0, dtype=torch.int64)
        accuracy = 0.0
        for step in range(1, trial.steps + 1):
            if batches.numel() < BATCH_SIZE:  # a fresh permutation each epoch
                batches = torch.cat([batches, torch.randperm(len(y_train), generator=order)])
            index, batches = batches[:BATCH_SIZE], batches[BATCH_SIZE:]
            loss = torch.nn.functional.cross_entropy(model(x_train[index]), y_train[index])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if step % EVAL_EVERY == 0 or step == trial.steps:
                with torch.no_grad():
                    accuracy = (model(x_val).argmax(1) == y_val).float().mean().item()
                trial.report(step, accuracy, loss=loss.item())
        return accuracy

    return train
