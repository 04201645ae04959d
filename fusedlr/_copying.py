"""Copying and pickling the optimizers (a mixin of ``optim._FusedOptimizer``): unlike torch's,
a copy keeps every attribute (schedule, counters, backend, clipping options), so that it steps
exactly as the original would; caches keyed on addresses are rebuilt."""

from __future__ import annotations

from . import _compile, _distributed
from ._state import StateTable


class CopyMethods:
    """``__getstate__``/``__setstate__``; ``super()`` is torch's Optimizer."""

    # Rebuilt after a copy or an unpickle: device tables and caches keyed on addresses, and the
    # handle under which compiled graphs find this optimizer.
    _TRANSIENT = ("_plan_cache", "_step_cache", "_compile_handle", "_reduction_cache", "_checked_meshes",
                  "_made_for_load")  # fmt: skip
    # What a torch LR scheduler sets on the instance: a ``step`` wrapper holding a weak
    # reference to *this* optimizer (a copy would step the original through it) and its flag.
    # torch's own __getstate__ drops both too.
    _SCHEDULER_PATCHES = ("step", "_opt_called")

    def __getstate__(self) -> dict:
        # torch keeps only defaults, state and param_groups (and drops hooks); we keep every
        # attribute (schedule, counters, backend, ...) so that a deep copy or an unpickled
        # optimizer steps exactly as the original would.
        state = {
            key: value
            for key, value in self.__dict__.items()
            if key not in self._TRANSIENT + self._SCHEDULER_PATCHES and not key.startswith("_optimizer_")
        }
        if state.get("norm_group") is not None:  # a deep copy shares the process group
            state["norm_group"] = _distributed.SharedGroup(state["norm_group"])
        return state

    def __setstate__(self, state: dict) -> None:
        defaults = state.get("defaults", self.__dict__.get("defaults", {}))
        had_differentiable = "differentiable" in defaults
        super().__setstate__(state)
        if not had_differentiable:  # torch's __setstate__ adds it; our step has no use for it
            self.defaults.pop("differentiable", None)
        self.__dict__.setdefault("clip_value", None)  # optimizers pickled before clip_value existed
        norm_group = self.__dict__.get("norm_group")
        self.norm_group = norm_group.group if isinstance(norm_group, _distributed.SharedGroup) else norm_group
        self._reduction_cache = None
        self.state = StateTable(self.state)
        self._flat_params = [p for group in self.param_groups for p in group["params"]]
        self._sharded = any(map(_distributed.is_dtensor, self._flat_params))
        self._checked_state_version = None
        self._plan_cache = None
        self._step_cache = None
        if "_compile_handle" not in self.__dict__:
            self._compile_handle = _compile.register(self)
        # Groups loaded from a torch.optim state dict lack our keys: fill them from defaults.
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)
