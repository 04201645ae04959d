"""Lightning with a fusedlr optimizer: the lr monitor showing the lr fusedlr applies, one clip.

The recipe (README, "Training with Hugging Face Trainer, Lightning and accelerate"):
``configure_optimizers`` returns the fusedlr optimizer, with its ``schedule`` and
``max_grad_norm`` and no lr scheduler; the Trainer gets no ``gradient_clip_val``; and this
module's ``LearningRateMonitor`` replaces Lightning's.

Lightning's own ``LearningRateMonitor`` logs ``param_group["lr"]``, which for fusedlr is the base
lr the schedule multiplies. This one logs, for fusedlr optimizers, the lr the batch's update
applies (``opt.next_lr()`` read at the start of the batch, when Lightning's logs it: the same
convention as Lightning's monitor over a torch scheduler stepped every step); others as
Lightning does. It also refuses ``Trainer(gradient_clip_val=...)`` (norm clipping) beside a
fusedlr optimizer before training starts: Lightning would clip every grad in place a second time
before fusedlr's fused clip (and make ``last_grad_norm`` the clipped norm), and with
``precision="16-mixed"`` or ``"bf16-mixed"`` it refuses anyway, with "does not allow for gradient
clipping because it performs unscaling of gradients internally" (fusedlr sets
``_step_supports_amp_scaling``: a GradScaler's unscale happens inside its step).
"""

from __future__ import annotations

from lightning.pytorch.callbacks import LearningRateMonitor as _LightningLearningRateMonitor

from ..lr_scheduler import unwrap_fused


def _fused(optimizer):
    try:
        return unwrap_fused(optimizer)
    except TypeError:
        return None


def check_gradient_clipping(trainer) -> None:
    """ValueError if ``trainer`` would norm-clip the grads of a fusedlr optimizer itself."""
    clip = trainer.gradient_clip_val
    algorithm = str(getattr(trainer.gradient_clip_algorithm, "value", trainer.gradient_clip_algorithm) or "norm")
    if not clip or algorithm != "norm":
        return
    for optimizer in trainer.optimizers:
        fused = _fused(optimizer)
        if fused is not None:
            raise ValueError(
                f"Trainer(gradient_clip_val={clip}) with a fusedlr {type(fused).__name__}: fusedlr clips inside its "
                f"step. Pass max_grad_norm={clip} to fusedlr.{type(fused).__name__}(...) in configure_optimizers and "
                "drop gradient_clip_val (Lightning would clip a second time, and refuses to clip under 16-mixed and "
                "bf16-mixed precision for optimizers that unscale inside their step)."
            )


class LearningRateMonitor(_LightningLearningRateMonitor):
    """``lightning.pytorch.callbacks.LearningRateMonitor`` that shows the lr fusedlr applies.

    Same arguments as Lightning's. For fusedlr optimizers the logged lr of each param group is
    the lr of the update the batch makes (read from the device when Lightning logs, every
    ``log_every_n_steps``); the momentum and weight decay entries are Lightning's. Raises, at
    fit start, where ``gradient_clip_val`` would clip the grads of a fusedlr optimizer.
    """

    def on_fit_start(self, trainer, pl_module) -> None:
        check_gradient_clipping(trainer)

    def _get_optimizer_stats(self, optimizer, names):
        stats = super()._get_optimizer_stats(optimizer, names)
        fused = _fused(optimizer)
        if fused is not None:
            for name, lr in zip(names, fused.next_lr()):
                value = float(lr)
                stats[name] = value
                self.lrs[name][-1] = value
        return stats
