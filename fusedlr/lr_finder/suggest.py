"""Suggested learning rates from a range-test curve: each rule as its source states it.

All rules read the *smoothed* loss (as fastai's and Lightning's finders do), after dropping
non-finite points and trimming the ends: the first tenth of the points and the last five, as
fastai's ``Learner.lr_find`` does (``[num_it // 10 : -5]``), since the first points mostly
show the smoothing warming up and the last ones the divergence.
"""

from __future__ import annotations

import math

import torch


def steep(lrs, losses) -> int:
    """Index of the steepest descent of the loss with respect to log(lr).

    fastai's ``steep`` takes forward differences over log(lr); Lightning's
    ``_LRFinder.suggestion`` takes ``torch.gradient(losses, spacing=[lrs])`` (central
    differences that respect uneven spacing) with respect to the lr itself. This rule is
    Lightning's gradient with the spacing in log(lr), fastai's variable: on an exponential sweep
    the points are evenly spaced in log(lr), and a linear sweep's uneven spacing is respected.
    """
    losses = torch.as_tensor(losses, dtype=torch.float64)
    log_lrs = torch.as_tensor(lrs, dtype=torch.float64).log()
    gradients = torch.gradient(losses, spacing=[log_lrs])[0]
    return int(torch.argmin(gradients))


def valley(lrs, losses) -> int:
    """Index of fastai's ``valley`` (``fastai.callback.schedule.valley``, fastai's default
    suggestion): the longest decreasing run of losses (a longest-decreasing-subsequence
    search), and the point a third plus a sixth of the way into it (the middle of its middle
    third). A transcription of fastai's loop, including where it records the start of the run,
    so that it suggests what fastai suggests."""
    n = len(losses)
    max_start, max_end = 0, 0
    lds = [1] * n
    for i in range(1, n):
        for j in range(0, i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    return max_start + int(sections) + int(sections / 2)


def minimum(lrs, losses) -> int:
    """Index of the lowest loss; the suggestion is that lr divided by 10 (fastai's ``minimum``,
    after Leslie Smith's advice to train an order of magnitude below where the loss bottoms out)."""
    return int(torch.argmin(torch.as_tensor(losses, dtype=torch.float64)))


RULES = {"steep": steep, "valley": valley, "minimum": minimum}
_DIVISOR = {"minimum": 10.0}


def trimmed(lrs, losses, skip_start=None, skip_end=5):
    """The points the rules read: finite, and without the first ``skip_start`` (default: a tenth
    of the points) and the last ``skip_end``; the ends are kept when too few points remain."""
    points = [(lr, loss) for lr, loss in zip(lrs, losses) if math.isfinite(loss) and lr > 0]
    if skip_start is None:
        skip_start = len(points) // 10
    if len(points) - skip_start - skip_end >= 2:
        points = points[skip_start : len(points) - skip_end]
    return [lr for lr, _ in points], [loss for _, loss in points]


def suggestions(lrs, smoothed_losses, rules=tuple(RULES), skip_start=None, skip_end=5) -> dict:
    """``{rule: suggested lr}`` (``None`` for every rule when fewer than 2 points are usable)."""
    kept_lrs, kept_losses = trimmed(lrs, smoothed_losses, skip_start, skip_end)
    out = {}
    for name in rules:
        if name not in RULES:
            raise ValueError(f"Unknown suggestion rule {name!r} (expected one of {', '.join(RULES)})")
        if len(kept_losses) < 2:
            out[name] = None
            continue
        out[name] = kept_lrs[RULES[name](kept_lrs, kept_losses)] / _DIVISOR.get(name, 1.0)
    return out
