"""The learning rates an optimizer applied (or will apply), as device tensors, without a sync.

The kernels compute each group's lr inside the step from the device counter
(``opt._schedule_step``: updates applied so far, not advanced by a skipped step), so the host
never knows it. Reading it back re-evaluates the same schedule program on the counter with
torch ops (``schedules/device.py``): a few tiny launches, no copy to the host. Plain-callable
schedules are evaluated on the host from ``opt._host_step`` (the index the step used), as the
step itself does.
"""

from __future__ import annotations

import torch

from .schedules import Schedule
from .schedules.device import run_on_device


def group_lrs(opt, *, upcoming: bool) -> list[torch.Tensor]:
    """Per param group, the lr of the last applied update (``upcoming=False``; before the first
    update, the first update's) or of the next update (``upcoming=True``), as 0-dim float64
    tensors on the counter's device, from each group's ``lr`` as it is now."""
    counter = opt._schedule_step
    bases = [float(group["lr"]) for group in opt.param_groups]
    schedule = opt.schedule
    if isinstance(schedule, Schedule):
        k = counter if upcoming else torch.clamp(counter - 1, min=0)
        scale, offset = run_on_device(schedule.program, k)
        return [scale * base + offset for base in bases]
    if schedule is None:
        multiplier = 1.0
    else:  # a plain callable: the host index, as the step uses it
        multiplier = float(schedule(opt._host_step if upcoming else max(opt._host_step - 1, 0)))
    # torch.full takes the value as a kernel argument: no host-to-device copy, no sync.
    return [torch.full((), base * multiplier + 0.0, dtype=torch.float64, device=counter.device) for base in bases]


class AppliedLRMethods:
    """The lr queries of ``optim._FusedOptimizer`` (a mixin)."""

    def _schedule_on_host(self) -> tuple[float, float]:
        """(scale, offset) of this update's lr, evaluated on the host (torch backend, callables)."""
        if self.schedule is None:
            return 1.0, 0.0
        if isinstance(self.schedule, Schedule):
            return self.schedule.scale_offset(self._host_step)
        return float(self.schedule(self._host_step)), 0.0

    def current_lr(self) -> list[torch.Tensor]:
        """Per param group, the lr of the last update applied (a skipped step applies none), as
        0-dim float64 device tensors: no host sync until you read them. Before the first update,
        the lr the first one will use. See ``_applied_lr.py``."""
        return group_lrs(self, upcoming=False)

    def next_lr(self) -> list[torch.Tensor]:
        """Per param group, the lr the next update will apply, as 0-dim float64 device tensors."""
        return group_lrs(self, upcoming=True)
