"""A torch LR scheduler that schedules nothing and reports the lr fusedlr applied.

Trainers and loggers (Hugging Face's Trainer, Lightning, accelerate, anything that calls
``scheduler.get_last_lr()``) expect a scheduler object beside the optimizer. A fusedlr
optimizer evaluates its schedule inside its own step and advances its own device counter, so
a real torch scheduler on top would apply a second schedule. ``AppliedLRScheduler`` fills the
slot instead: ``step()`` does nothing, and ``get_last_lr()`` returns ``opt.current_lr()``.
"""

from __future__ import annotations

import torch


def innermost(optimizer):
    """The optimizer inside trainers' wrappers: accelerate's AcceleratedOptimizer keeps it as
    ``.optimizer``, Lightning's LightningOptimizer as ``._optimizer`` (and poses as a subclass of
    its class, so an isinstance check stops too early, and an attribute set on it does not reach
    the optimizer)."""
    for _ in range(8):
        inner = vars(optimizer).get("_optimizer", vars(optimizer).get("optimizer"))
        if not isinstance(inner, torch.optim.Optimizer):
            return optimizer
        optimizer = inner
    return optimizer


def unwrap_fused(optimizer):
    """The fusedlr optimizer inside trainers' wrappers (``innermost``), or a TypeError."""
    from .optim import _FusedOptimizer

    inner = innermost(optimizer)
    if isinstance(inner, _FusedOptimizer):
        return inner
    raise TypeError(f"expected a fusedlr optimizer (fusedlr.AdamW, fusedlr.Lion), got {type(optimizer).__name__}")


class AppliedLRScheduler(torch.optim.lr_scheduler.LRScheduler):
    """Stands in for a torch LR scheduler beside a fusedlr optimizer.

    ``step()`` is a no-op (the optimizer advances its own schedule counter, on the device, only
    for updates it applies); ``get_last_lr()`` returns the lr of the last applied update per
    param group (``opt.current_lr()``: 0-dim float64 device tensors; before the first update,
    the first update's lr). Saving and loading its state is a no-op too: the counter travels in
    the optimizer's state dict. Loading a real scheduler's state (a torch or Hugging Face
    checkpoint being migrated) is accepted and ignored.

    Unlike torch schedulers it does not write ``group["lr"]``: that stays the base lr the
    schedule multiplies, and ``initial_lr`` is not added to the groups.
    """

    def __init__(self, optimizer):
        # No LRScheduler.__init__: it would add initial_lr to the groups, wrap optimizer.step and
        # take a first step that writes group["lr"].
        self.optimizer = optimizer
        self._fused = unwrap_fused(optimizer)
        self.base_lrs = [group["lr"] for group in self._fused.param_groups]
        self.last_epoch = 0
        self._step_count = 1

    def step(self, epoch=None) -> None:
        """Nothing to do: the fusedlr optimizer advanced its schedule in its own step."""
        self.last_epoch += 1

    def get_last_lr(self) -> list[torch.Tensor]:
        return self._fused.current_lr()

    def get_lr(self) -> list[torch.Tensor]:
        return self._fused.current_lr()

    def state_dict(self) -> dict:
        return {"last_epoch": self.last_epoch}

    def load_state_dict(self, state_dict: dict) -> None:
        self.last_epoch = int(state_dict.get("last_epoch", 0))


def warn_if_torch_scheduler_attached(opt) -> None:
    """Warn, at the first update, when a torch LR scheduler was built on an optimizer that has
    its own schedule: the scheduler rewrites ``group["lr"]`` and fusedlr's schedule multiplies it
    again. torch's LRScheduler adds ``initial_lr`` to the groups (through wrappers such as
    accelerate's, too) and wraps ``step``; AppliedLRScheduler does neither, and loading a torch
    state dict under a fusedlr schedule removes ``initial_lr`` (``_torch_migration.py``)."""
    wrapped = getattr(opt.__dict__.get("step"), "_wrapped_by_lr_sched", False)
    if wrapped or any("initial_lr" in group for group in opt.param_groups):
        import warnings

        warnings.warn(
            f"a torch LR scheduler is attached to this {type(opt).__name__}, which has its own schedule: both apply "
            "(the scheduler rewrites group['lr'] and the fusedlr schedule multiplies it). Give the trainer "
            "fusedlr.AppliedLRScheduler(opt) instead (Hugging Face: fusedlr.integrations.transformers.FusedTrainer), "
            "or drop one of the two schedules.",
            UserWarning,
            stacklevel=4,
        )
