"""Suggested learning rates from a range-test curve: each rule as its source states it.

All rules read the *smoothed* loss (as fastai's and Lightning's finders do) at the points
``trimmed`` keeps: the finite ones, one per distinct lr (the last: a fusedlr optimizer's sweep
does not advance on an update a GradScaler skips, so such points repeat an lr), then without the
first tenth of those points and the last five, since the first points mostly show the smoothing
warming up and the last ones the divergence. This is close to fastai's ``Learner.lr_find``
(``[num_it // 10 : -5]`` of the recorded points, then cut at the first NaN) but not the same:
fastai counts the tenth from the requested ``num_it`` and trims before dropping NaNs. With
fewer than ``MIN_POINTS`` usable points the curve is noise: every suggestion is None, with a
warning.
"""

from __future__ import annotations

import math
import warnings

import torch

MIN_POINTS = 10


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
    # Two points at one lr give a NaN (0 / 0); argmin would pick it: it is never the steepest.
    gradients = torch.where(torch.isfinite(gradients), gradients, math.inf)
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


def usable(lrs, losses):
    """The finite points with lr > 0, one per distinct lr: the last one recorded at it (its
    smoothed loss has absorbed the others)."""
    last = {}
    for lr, loss in zip(lrs, losses):
        if math.isfinite(loss) and lr > 0:
            last[lr] = loss
    return list(last.items())


def trimmed(lrs, losses, skip_start=None, skip_end=5):
    """The points the rules read: the ``usable`` ones, without the first ``skip_start`` (default:
    a tenth of them) and the last ``skip_end``; the ends are kept when too few points remain."""
    points = usable(lrs, losses)
    if skip_start is None:
        skip_start = len(points) // 10
    if len(points) - skip_start - skip_end >= 2:
        points = points[skip_start : len(points) - skip_end]
    return [lr for lr, _ in points], [loss for _, loss in points]


def suggestions(lrs, smoothed_losses, rules=tuple(RULES), skip_start=None, skip_end=5) -> dict:
    """``{rule: suggested lr}`` for ``rules`` (names, or one name); ``None`` for every rule, with
    a warning, when fewer than ``MIN_POINTS`` points are usable."""
    rules = (rules,) if isinstance(rules, str) else tuple(rules)
    for name in rules:
        if name not in RULES:
            raise ValueError(f"Unknown suggestion rule {name!r} (expected one of {', '.join(RULES)})")
    count = len(usable(lrs, smoothed_losses))
    if count < MIN_POINTS:
        warnings.warn(
            f"LR range test: only {count} usable points (finite, distinct lrs); suggestions need at least "
            f"{MIN_POINTS} and are None: run more num_steps",
            UserWarning,
            stacklevel=3,  # the caller of find_lr or of RangeTestResult.suggest
        )
        return dict.fromkeys(rules)
    kept_lrs, kept_losses = trimmed(lrs, smoothed_losses, skip_start, skip_end)
    return {name: kept_lrs[RULES[name](kept_lrs, kept_losses)] / _DIVISOR.get(name, 1.0) for name in rules}
