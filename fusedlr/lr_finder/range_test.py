"""The LR range test (Smith 2015, "Cyclical Learning Rates for Training Neural Networks"; the
exponential sweep of fastai and torch-lr-finder): train for a few hundred updates while the lr
grows from tiny to huge, watch the loss, and read a good lr off the curve."""

from __future__ import annotations

import contextlib
import math

import torch

from ..optim import _FusedOptimizer
from ..schedules import RangeTestRamp
from . import suggest
from .batches import endless, model_loss, to_device
from .result import RangeTestResult
from .snapshot import TrainingSnapshot


class _SmoothedLoss:
    """Debiased exponential average (fastai's ``AvgSmoothLoss``, Lightning's finder: beta 0.98)
    and the divergence test: stop when the smoothed loss exceeds ``divergence`` times the best
    one seen, or any loss is not finite."""

    def __init__(self, beta: float, divergence: float | None):
        self.beta, self.divergence = beta, divergence
        self.average, self.count, self.best = 0.0, 0, math.inf
        self.values: list[float] = []

    def add(self, loss: float) -> bool:
        """Record one loss; True when the test should stop here."""
        self.count += 1
        self.average = self.beta * self.average + (1 - self.beta) * loss
        smoothed = self.average / (1 - self.beta**self.count)
        self.values.append(smoothed)
        if not math.isfinite(smoothed):
            return True
        diverged = self.divergence is not None and self.count > 1 and smoothed > self.divergence * self.best
        self.best = min(self.best, smoothed)
        return diverged


def _reference_ratios(groups) -> list[float]:
    """Each group's lr as a fraction of the largest group lr: the sweep keeps these ratios
    (layer-wise decay survives the test). All 1 when every lr is 0."""
    top = max(float(g["lr"]) for g in groups)
    return [float(g["lr"]) / top if top > 0 else 1.0 for g in groups]


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the bar is a nicety: pip install 'fusedlr[tools]'
        return None
    return tqdm(total=total, desc="LR range test", leave=False)


def find_lr(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data=None,
    *,
    loss_fn=None,
    step_fn=None,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 100,
    mode: str = "exp",
    accumulation_steps: int = 1,
    grad_scaler=None,
    autocast_dtype: torch.dtype | None = None,
    beta: float = 0.98,
    divergence: float | None = 4.0,
    rule: str = "valley",
    sync_every: int = 10,
    device=None,
    snapshot: str = "cpu",
    progress: bool = True,
) -> RangeTestResult:
    """Run an LR range test with ``model`` and ``optimizer``, then put both back exactly.

    Each update ``i`` (of ``num_steps``) trains with lr ``start_lr * (end_lr / start_lr) **
    (i / (num_steps - 1))`` (``mode="exp"``) or the linear ramp between them (``"linear"``).
    With a fusedlr optimizer the sweep is a device schedule (``RangeTestRamp``) advanced by the
    optimizer's own counter, so the updates run as training does; with any other optimizer
    each group's ``lr`` is set before each update. With several groups the largest group lr
    follows the sweep and the others keep their ratio to it.

    The loss of a batch comes from ``step_fn(batch) -> loss`` (forward only: the test does the
    backward, accumulation and scaling), or from ``data`` and ``loss_fn`` as
    ``fusedlr.lr_finder.batches.model_loss`` describes (tensor, ``(x, y)``, ``(*inputs, y)`` or
    dict batches; a dict batch of a Hugging Face model needs no ``loss_fn``). Batches are
    moved to ``device`` (default: the model's). ``accumulation_steps`` batches make one update
    (each loss divided by their number); ``grad_scaler`` (a ``torch.amp.GradScaler``) scales and
    steps; ``autocast_dtype`` runs the forward under ``torch.autocast``.

    Losses are smoothed (debiased exponential average, ``beta``) and read from the device once
    per ``sync_every`` updates; the test stops when the smoothed loss exceeds ``divergence``
    times the best (``None``: never) or is not finite. Suggestions: see
    ``fusedlr.lr_finder.suggest`` (``rule`` picks ``result.suggestion``).

    Everything is restored afterwards, also when the test raises or is interrupted: parameters,
    buffers, grads and train/eval flags; optimizer states, param groups and fusedlr's schedule
    counter; a GradScaler's state; the random number generators. The copy lives on the CPU
    (``snapshot="cpu"``) or beside the originals (``"device"``).
    """
    if not (isinstance(start_lr, (int, float)) and isinstance(end_lr, (int, float)) and 0 < start_lr < end_lr):
        raise ValueError(f"Invalid range: start_lr={start_lr!r}, end_lr={end_lr!r} (need 0 < start_lr < end_lr)")
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 2:
        raise ValueError(f"Invalid num_steps: {num_steps!r} (need an int >= 2)")
    if not isinstance(accumulation_steps, int) or accumulation_steps < 1:
        raise ValueError(f"Invalid accumulation_steps: {accumulation_steps!r}")
    if not isinstance(sync_every, int) or sync_every < 1:
        raise ValueError(f"Invalid sync_every: {sync_every!r} (need an int >= 1)")
    if divergence is not None and not divergence > 1.0:
        raise ValueError(f"Invalid divergence: {divergence!r} (need a factor > 1, or None)")
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"Invalid beta: {beta!r} (need 0 <= beta < 1)")
    if rule not in suggest.RULES:
        raise ValueError(f"Invalid rule: {rule!r} (expected one of {', '.join(suggest.RULES)})")
    if step_fn is None and data is None:
        raise ValueError("find_lr needs data (with loss_fn, or a dict batch with labels) or step_fn")
    ramp = RangeTestRamp(end_lr / start_lr, num_steps, mode)
    if device is None:
        device = next(model.parameters()).device
    fused = isinstance(optimizer, _FusedOptimizer)
    bases = [start_lr * ratio for ratio in _reference_ratios(optimizer.param_groups)]

    saved = TrainingSnapshot(model, optimizer, grad_scaler=grad_scaler, to=snapshot)
    smoother = _SmoothedLoss(beta, divergence)
    lrs, losses, stopped = [], [], False
    bar = _progress(num_steps, progress)
    try:
        if fused:  # the sweep runs on the device, from the optimizer's own counter
            optimizer.schedule = ramp
            optimizer._schedule_step.zero_()
            optimizer._host_step = 0
            for group, base in zip(optimizer.param_groups, bases):
                group["lr"] = base
        batches = endless(data) if data is not None else None
        autocast = (
            torch.autocast(torch.device(device).type, dtype=autocast_dtype) if autocast_dtype is not None else None
        )
        pending_losses, pending_ks = [], []
        for i in range(num_steps):
            if not fused:
                for group, base in zip(optimizer.param_groups, bases):
                    group["lr"] = ramp.lr(i, base)
            model.train()
            optimizer.zero_grad(set_to_none=True)
            total = None
            for _ in range(accumulation_steps):
                batch = to_device(next(batches), device) if batches is not None else None
                with autocast if autocast is not None else contextlib.nullcontext():
                    if step_fn is not None:
                        loss = step_fn(batch) if batches is not None else step_fn()
                    else:
                        loss = model_loss(model, batch, loss_fn)
                if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                    raise TypeError(f"find_lr: the loss must be a one-element tensor, got {loss!r}")
                loss = loss / accumulation_steps
                (grad_scaler.scale(loss) if grad_scaler is not None else loss).backward()
                total = loss.detach() if total is None else total + loss.detach()
            # The update index this step will use: fusedlr's device counter (which a GradScaler's
            # skipped step does not advance), or i.
            pending_ks.append(optimizer._schedule_step.clone() if fused else i)
            if grad_scaler is not None:
                grad_scaler.step(optimizer)
                grad_scaler.update()
            else:
                optimizer.step()
            pending_losses.append(total.reshape(()))
            if len(pending_losses) == sync_every or i == num_steps - 1:
                # One host read per `sync_every` updates, not one per update.
                values = torch.stack(pending_losses).float().cpu().tolist()
                ks = torch.stack(pending_ks).cpu().tolist() if fused else pending_ks
                pending_losses, pending_ks = [], []
                for k, value in zip(ks, values):
                    lrs.append(ramp.lr(int(k), start_lr))
                    losses.append(value)
                    if smoother.add(value):
                        stopped = True
                        break
                if bar is not None:
                    bar.update(len(values))
                    bar.set_postfix(loss=f"{smoother.values[-1]:.4g}")
                if stopped:
                    break
    finally:
        if bar is not None:
            bar.close()
        saved.restore()
    result = RangeTestResult(lrs, losses, smoother.values, rule=rule, stopped_early=stopped, beta=beta)
    result.suggestions = suggest.suggestions(lrs, smoother.values)
    return result
