"""Continuing a ``torch.optim`` run that a torch LR scheduler drove, under a fusedlr schedule.

A torch scheduler rewrites each group's ``lr`` after every step and keeps the lr it started
from in ``initial_lr``; a fusedlr schedule multiplies the group's lr itself. So a torch state
dict's decayed ``lr`` must not become fusedlr's base: ``initial_lr`` is the base, and the
counter (the number of updates applied, from the saved per-parameter ``step``) says where the
schedule resumes. Then the next update applies ``schedule.lr(N, initial_lr)``, which is what
``LambdaLR(optimizer, schedule)`` stepped once per update had written into ``lr``: checked, and
a warning says what to do where it is not.
"""

from __future__ import annotations

import math
import warnings

from .schedules import Schedule


def _lr_at(schedule, k: int, base: float) -> float:
    if isinstance(schedule, Schedule):
        return schedule.lr(k, base)
    return base * float(schedule(k))


def continue_torch_schedule(opt) -> None:
    """After ``opt.load_state_dict`` of a state dict without fusedlr's counters (torch.optim's,
    lion-pytorch's): where the optimizer has a schedule and the groups carry a torch scheduler's
    ``initial_lr``, make ``initial_lr`` the groups' base lr."""
    if opt.schedule is None:
        return  # torch's own scheduler keeps driving group["lr"], as in torch
    counter = opt._host_step
    has_steps = any("step" in state for state in opt.state.values())
    for index, group in enumerate(opt.param_groups):
        if "initial_lr" not in group:
            continue
        base, saved = float(group["initial_lr"]), float(group["lr"])
        if not has_steps and counter == 0 and saved != base:
            warnings.warn(
                f"param group {index}: this state dict has no step count (lion-pytorch keeps none) and a torch "
                f"scheduler had moved its lr from {base} to {saved}: the fusedlr schedule restarts at update 0 from "
                f"lr {base}. To continue it, set state_dict['schedule_step'] = <updates applied> before loading.",
                UserWarning,
                stacklevel=3,
            )
        else:
            expected = _lr_at(opt.schedule, counter, base)
            if not math.isclose(saved, expected, rel_tol=1e-6, abs_tol=1e-12):
                warnings.warn(
                    f"param group {index}: the saved lr {saved} is not this schedule's lr at update {counter} from "
                    f"initial_lr {base} ({expected}): the torch scheduler that wrote it was another schedule, or was "
                    f"not stepped once per optimizer step. fusedlr continues at update {counter} from lr {base}; to "
                    "resume elsewhere set state_dict['schedule_step'] (and the groups' initial_lr) before loading.",
                    UserWarning,
                    stacklevel=3,
                )
        group["lr"] = base
        del group["initial_lr"]  # no torch scheduler drives this group any more
