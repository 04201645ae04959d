"""The LR range test (Smith 2015, "Cyclical Learning Rates for Training Neural Networks"; the
exponential sweep of fastai and torch-lr-finder): train for a few hundred updates while the lr
grows from tiny to huge, watch the loss, and read a good lr off the curve."""

from __future__ import annotations

import contextlib
import math
import warnings

import torch

from ..lr_scheduler import innermost
from ..optim import _FusedOptimizer
from ..schedules import RangeTestRamp
from . import suggest
from .batches import DataRanOut, data_generators, describe, endless, model_loss, to_device
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

    A one-shot ``data`` (an iterator, a generator) that ends before ``num_steps`` updates ends the
    test there, with a warning; re-iterable data (a DataLoader, a list) starts another pass. A
    Schedule-Free optimizer left in eval mode is put in train mode for the test (and back).
    """
    _check_arguments(start_lr, end_lr, num_steps, accumulation_steps, sync_every, divergence, beta, rule)
    if step_fn is None and data is None:
        raise ValueError("find_lr needs data (with loss_fn, or a dict batch with labels) or step_fn")
    ramp = RangeTestRamp(end_lr / start_lr, num_steps, mode)
    if device is None:
        device = next(model.parameters()).device
    # Steps go through what the caller passed (a trainer's wrapper syncs or scales there); the
    # sweep, the snapshot and the restore act on the optimizer inside it.
    stepped, optimizer = optimizer, innermost(optimizer)
    fused = isinstance(optimizer, _FusedOptimizer)
    bases = [start_lr * ratio for ratio in _reference_ratios(optimizer.param_groups)]
    update = _Update(model, stepped, data, device, loss_fn, step_fn, accumulation_steps, grad_scaler, autocast_dtype)

    saved = TrainingSnapshot(model, optimizer, grad_scaler=grad_scaler, to=snapshot, generators=data_generators(data))
    recorder = _Recorder(ramp, start_lr, _SmoothedLoss(beta, divergence), _progress(num_steps, progress))
    ran_out = False
    try:
        _train_mode(optimizer)
        if fused:  # the sweep runs on the device, from the optimizer's own counter
            optimizer.schedule = ramp
            optimizer._schedule_step.zero_()
            optimizer._host_step = 0
            # The sweep is the only schedule while it runs: a torch scheduler attached to the
            # optimizer is not stepped by the test, so its marks (the step wrapper, initial_lr)
            # are set aside, or the first update would warn that both apply. Restored after.
            optimizer.__dict__.pop("step", None)
            for group, base in zip(optimizer.param_groups, bases):
                group["lr"] = base
                group.pop("initial_lr", None)
        for i in range(num_steps):
            if not fused:
                for group, base in zip(optimizer.param_groups, bases):
                    group["lr"] = ramp.lr(i, base)
            # The update index this step uses: fusedlr's device counter (which a GradScaler's
            # skipped step does not advance), or i.
            k = optimizer._schedule_step.clone() if fused else i
            try:
                loss = update()
            except DataRanOut:
                ran_out = True
                break
            recorder.add(k, loss)
            if (len(recorder.pending) == sync_every or i == num_steps - 1) and recorder.flush():
                break
        recorder.flush()  # the points left pending when the data ran out
    finally:
        recorder.close()
        saved.restore()
    if ran_out:
        _data_ran_out(len(recorder.lrs), num_steps)
    smoothed = recorder.smoother.values
    result = RangeTestResult(recorder.lrs, recorder.losses, smoothed, rule=rule, stopped_early=recorder.stopped,
                             beta=beta)  # fmt: skip
    result.suggestions = suggest.suggestions(recorder.lrs, smoothed)
    return result


def _check_arguments(start_lr, end_lr, num_steps, accumulation_steps, sync_every, divergence, beta, rule) -> None:
    if not (isinstance(start_lr, (int, float)) and isinstance(end_lr, (int, float)) and 0 < start_lr < end_lr):
        raise ValueError(f"Invalid range: start_lr={start_lr!r}, end_lr={end_lr!r} (need 0 < start_lr < end_lr)")
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 2:
        raise ValueError(f"Invalid num_steps: {num_steps!r} (need an int >= 2)")
    if not isinstance(accumulation_steps, int) or isinstance(accumulation_steps, bool) or accumulation_steps < 1:
        raise ValueError(f"Invalid accumulation_steps: {accumulation_steps!r}")
    if not isinstance(sync_every, int) or isinstance(sync_every, bool) or sync_every < 1:
        raise ValueError(f"Invalid sync_every: {sync_every!r} (need an int >= 1)")
    if divergence is not None and not divergence > 1.0:
        raise ValueError(f"Invalid divergence: {divergence!r} (need a factor > 1, or None)")
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"Invalid beta: {beta!r} (need 0 <= beta < 1)")
    if rule not in suggest.RULES:
        raise ValueError(f"Invalid rule: {rule!r} (expected one of {', '.join(suggest.RULES)})")


def _train_mode(optimizer) -> None:
    """Schedule-Free optimizers (fusedlr's, the schedulefree package's) step only in train mode:
    one left in eval mode is switched for the test. Called after the snapshot, whose restore puts
    back the eval-mode params and flags bit for bit (an ``eval()`` afterwards would round)."""
    if callable(getattr(optimizer, "train", None)) and any(
        not group.get("train_mode", True) for group in optimizer.param_groups
    ):
        optimizer.train()


def _data_ran_out(points: int, num_steps: int) -> None:
    if not points:
        raise ValueError("find_lr: the data ran out before the first update; pass more batches or a re-iterable")
    warnings.warn(
        f"find_lr: the data ran out after {points} of num_steps={num_steps} updates (a one-shot iterator cannot "
        "start another pass): the result holds the points so far. Pass a re-iterable (a DataLoader, a list) or "
        "more batches for the whole sweep.",
        UserWarning,
        stacklevel=3,
    )


class _Update:
    """One optimizer update over ``accumulation_steps`` batches, as a training loop does it;
    returns the update's loss (the sum of the divided micro-batch losses) on the device."""

    def __init__(self, model, optimizer, data, device, loss_fn, step_fn, accumulation_steps, grad_scaler, dtype):
        self.model, self.optimizer, self.device = model, optimizer, device
        self.loss_fn, self.step_fn, self.accumulation_steps = loss_fn, step_fn, accumulation_steps
        self.grad_scaler = grad_scaler
        self.batches = endless(data) if data is not None else None
        self.autocast = torch.autocast(torch.device(device).type, dtype=dtype) if dtype is not None else None

    def _loss(self):
        batch = to_device(next(self.batches), self.device) if self.batches is not None else None
        with self.autocast if self.autocast is not None else contextlib.nullcontext():
            if self.step_fn is None:
                loss = model_loss(self.model, batch, self.loss_fn)
            else:
                loss = self.step_fn(batch) if self.batches is not None else self.step_fn()
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise TypeError(f"find_lr: the loss must be a one-element tensor, got {describe(loss)}")
        return loss

    def __call__(self) -> torch.Tensor:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        total = None
        for _ in range(self.accumulation_steps):
            loss = self._loss() / self.accumulation_steps
            (self.grad_scaler.scale(loss) if self.grad_scaler is not None else loss).backward()
            total = loss.detach() if total is None else total + loss.detach()
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()
        return total.reshape(())


class _Recorder:
    """Losses and update indices kept on the device and read in batches (one host read per
    flush, not one per update); the lr of each point, the smoothing and the stop decision."""

    def __init__(self, ramp, start_lr, smoother, bar):
        self.ramp, self.start_lr, self.smoother, self.bar = ramp, start_lr, smoother, bar
        self.pending: list = []
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.stopped = False

    def add(self, k, loss) -> None:
        self.pending.append((k, loss))

    def flush(self) -> bool:
        """Read the pending points; True when the test should stop."""
        if not self.pending:
            return self.stopped
        ks = [k for k, _ in self.pending]
        if ks and isinstance(ks[0], torch.Tensor):
            ks = torch.stack(ks).cpu().tolist()
        values = torch.stack([loss for _, loss in self.pending]).float().cpu().tolist()
        self.pending = []
        for k, value in zip(ks, values):
            self.lrs.append(self.ramp.lr(int(k), self.start_lr))
            self.losses.append(value)
            if self.smoother.add(value):
                self.stopped = True
                break
        if self.bar is not None:
            self.bar.update(len(values))
            self.bar.set_postfix(loss=f"{self.smoother.values[-1]:.4g}")
        return self.stopped

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
