"""Checks of a state dict handed to ``load_state_dict``: malformed input gets a clear error,
and the optimizer is left exactly as it was (``load_state_dict`` restores it on any error).

torch's own ``Optimizer.load_state_dict`` validates the group count and sizes; these add what
a fused step relies on: the structure it indexes, every group's hyperparameters, every loaded
state complete and shaped like its parameter, and the schedule counter a non-negative integer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

# What optimizer.load_state_dict replaces; restored on any error.
LOADED_ATTRIBUTES = ("state", "param_groups", "defaults", "_schedule_step", "_host_step", "_plan_cache",
                     "_step_cache", "_flat_params")  # fmt: skip


STEP_EXPECTED = "expected a non-negative number or one-element tensor"


def check_structure(state_dict, param_groups) -> None:
    """The shape of a state dict, before torch indexes it (``param_groups``: the optimizer's)."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a dict (as state_dict() returns); got {type(state_dict).__name__}")
    for key in ("state", "param_groups"):
        if key not in state_dict:
            raise KeyError(f"state_dict has no {key!r} entry (keys: {sorted(map(str, state_dict))})")
    if not isinstance(state_dict["state"], Mapping):
        raise TypeError(f"state_dict['state'] must be a dict; got {type(state_dict['state']).__name__}")
    groups = state_dict["param_groups"]
    if not isinstance(groups, Sequence) or isinstance(groups, (str, bytes)):
        raise TypeError(f"state_dict['param_groups'] must be a list of dicts; got {type(groups).__name__}")
    ids = []
    for i, group in enumerate(groups):
        if not isinstance(group, Mapping) or "params" not in group:
            raise ValueError(f"state_dict['param_groups'][{i}] must be a dict with a 'params' list")
        if not isinstance(group["params"], Sequence) or isinstance(group["params"], (str, bytes)):
            raise ValueError(f"state_dict['param_groups'][{i}]['params'] must be a list of parameter indices")
        ids += list(group["params"])
    # torch's own checks, with its messages, before ours.
    if len(groups) != len(param_groups):
        raise ValueError("loaded state dict has a different number of parameter groups")
    if any(len(saved["params"]) != len(group["params"]) for saved, group in zip(groups, param_groups)):
        raise ValueError(
            "loaded state dict contains a parameter group that doesn't match the size of optimizer's group"
        )
    if len(set(map(repr, ids))) != len(ids):
        raise ValueError("state_dict['param_groups'] lists a parameter index twice")
    unknown = [key for key in state_dict["state"] if key not in ids]
    if unknown:
        raise ValueError(f"state_dict['state'] holds state for indices {unknown[:5]} that no param group lists")
    for key, value in state_dict["state"].items():
        if not isinstance(value, Mapping):
            kind = type(value).__name__
            raise ValueError(f"state_dict['state'][{key!r}] must be a dict of state tensors; got {kind}")
        if "step" in value and not _is_count(value["step"], integral=False):  # before torch's cast mangles it
            raise ValueError(f"Invalid state 'step': {value['step']!r} ({STEP_EXPECTED})")


def _is_count(value, *, integral: bool) -> bool:
    """A non-negative finite number, or a one-element real tensor holding one."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex() or value.dtype == torch.bool:
            return False
        if value.device.type == "meta":
            return True  # no value to read
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    number = float(value)
    return math.isfinite(number) and number >= 0 and (not integral or number == int(number))


def step_tensor(value, device) -> torch.Tensor:
    """A loaded per-parameter ``step`` as the float32 0-dim tensor the kernels advance, copied
    (we never step a tensor the caller still holds)."""
    if not _is_count(value, integral=False):
        raise ValueError(f"Invalid state 'step': {value!r} ({STEP_EXPECTED})")
    return torch.as_tensor(value).reshape(()).to(device=device, dtype=torch.float32, copy=True)


def counter_tensor(value, device) -> torch.Tensor:
    """The loaded schedule counter (``schedule_step``) as an int64 0-dim tensor on ``device``."""
    if not _is_count(value, integral=True):
        raise ValueError(f"Invalid schedule_step: {value!r} (expected a non-negative integer)")
    return torch.as_tensor(value).reshape(()).to(device=device, dtype=torch.int64, copy=True)
