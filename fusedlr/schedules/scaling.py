"""Batch-size rules for the peak learning rate, from the seed guide (section 6.2 and 4.1)."""

from __future__ import annotations

import math


def _check_positive(name, value):
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 and math.isfinite(value)):
        raise ValueError(f"Invalid {name}: {value!r} (must be a positive number)")


def linear_scaled_lr(base_lr: float, base_batch_size: int, batch_size: int) -> float:
    """Goyal et al.'s linear scaling rule: ``base_lr * batch_size / base_batch_size``.

    The seed guide's example: 1e-4 at batch 256 becomes 8e-4 at batch 2048. It breaks down for
    very large batches (beyond about 8k): use ``sqrt_scaled_lr`` there.
    """
    for name, value in (("base_lr", base_lr), ("base_batch_size", base_batch_size), ("batch_size", batch_size)):
        _check_positive(name, value)
    return base_lr * batch_size / base_batch_size


def sqrt_scaled_lr(base_lr: float, base_batch_size: int, batch_size: int) -> float:
    """Square-root scaling: ``base_lr * sqrt(batch_size / base_batch_size)``."""
    for name, value in (("base_lr", base_lr), ("base_batch_size", base_batch_size), ("batch_size", batch_size)):
        _check_positive(name, value)
    return base_lr * math.sqrt(batch_size / base_batch_size)


def max_lr_rule_of_thumb(n_params_billions: float, effective_batch_size: int) -> float:
    """The seed guide's empirical peak lr: ``0.003 / sqrt(N) * sqrt(B / 256)``, N in billions.

    A starting point for a sweep, not a result. Note that the guide's own example table does
    not follow this formula (it lists 6e-4 for 1B parameters at batch 512, where the formula
    gives about 4.2e-3); this function implements the formula as written.
    """
    _check_positive("n_params_billions", n_params_billions)
    _check_positive("effective_batch_size", effective_batch_size)
    return 0.003 / math.sqrt(n_params_billions) * math.sqrt(effective_batch_size / 256)
