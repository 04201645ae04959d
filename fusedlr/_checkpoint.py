"""``state_dict`` and ``load_state_dict`` of the optimizers (a mixin of ``optim._FusedOptimizer``):
the schedule counter travels with the states, saved dtypes are kept, and a malformed state dict
changes nothing (its checks are in ``_state_dict.py``)."""

from __future__ import annotations

import torch

from . import _distributed, _fused, _precision, _quantized, _state_dict, _torch_migration

# Group options that say how states are stored, not how the step computes: the loading
# optimizer's own are kept (``_load_state_dict``).
STORAGE_OPTIONS = ("state_dtype", "master_weights", "stochastic_rounding")


# Each group of a saved state dict also records the sum of its params' ``step`` counts:
# torch.optim and the schedulefree package keep group keys they do not know, so a fusedlr dict
# that one of them stepped further comes back with fusedlr's old counter in its groups, and
# only the steps, grown since, tell.
STEP_SUM_KEY = "param_step_sum"


def _step_sum(states, indices) -> float | None:
    """The sum of the ``step`` counts of ``indices``' states (None where none has one)."""
    steps = [states[i]["step"] for i in indices if i in states and "step" in states[i]]
    steps = [s for s in steps if not (isinstance(s, torch.Tensor) and s.device.type == "meta")]
    if not steps:
        return None
    if all(isinstance(s, torch.Tensor) and s.numel() == 1 for s in steps):
        device = steps[0].device  # one read for all of them
        return float(torch.stack([s.reshape(()).to(device, torch.float64) for s in steps]).sum())
    return float(sum(float(s) for s in steps))


def _stepped_elsewhere(state_dict) -> bool:
    """Whether another optimizer stepped this fusedlr state dict after it was saved."""
    for group in state_dict["param_groups"]:
        if STEP_SUM_KEY in group and _step_sum(state_dict["state"], group["params"]) != group[STEP_SUM_KEY]:
            return True
    return False


class StateDictMethods:
    """``state_dict``/``load_state_dict`` with fusedlr's counter; ``super()`` is torch's Optimizer."""

    def state_dict(self) -> dict:
        state_dict = super().state_dict()
        # Plain dicts, as torch's: a state dict holds no fusedlr type (weights_only loads).
        state_dict["state"] = {index: dict(state) for index, state in state_dict["state"].items()}
        state_dict["schedule_step"] = self._schedule_step.clone()
        # torch.distributed.checkpoint keeps only "state" and "param_groups": the counter travels
        # in every group too (a plain int, the same in each; removed again on load).
        counter = int(self._schedule_step.item())
        state_dict["param_groups"] = [
            dict(group, schedule_step=counter, **{STEP_SUM_KEY: _step_sum(state_dict["state"], group["params"])})
            for group in state_dict["param_groups"]
        ]
        return state_dict

    def load_state_dict(self, state_dict: dict) -> None:
        # Validated in full; on any error the optimizer is put back as it was (torch's own load
        # builds new state and groups aside, so restoring the attributes undoes everything).
        _state_dict.check_structure(state_dict, self.param_groups)
        before = {name: self.__dict__[name] for name in _state_dict.LOADED_ATTRIBUTES if name in self.__dict__}
        before["defaults"] = dict(self.defaults)
        try:
            self._load_state_dict(state_dict)
            self._check_loaded()
        except BaseException:
            self.__dict__.update(before)
            raise
        # After DCP's state-making step: what the checkpoint did not fill (only once the load
        # has succeeded: a failed one changes nothing, and a corrected retry checks again).
        self.check_made_states()

    def _check_loaded(self) -> None:
        """The loaded groups and states, checked as a step would check them."""
        self._check_groups()
        pairs = [(p, group) for group in self.param_groups for p in group["params"]]
        _fused.check_states(pairs, self.state, required=self._required_state)

    def _load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        counter = state_dict.pop("schedule_step", None)
        groups = [dict(group) for group in state_dict["param_groups"]]
        if counter is None and _stepped_elsewhere(state_dict):
            for group in groups:  # a stale counter: read the dict as theirs (counter from the steps)
                group.pop("schedule_step", None)
        for group in groups:
            group.pop(STEP_SUM_KEY, None)
        group_counters = [group.pop("schedule_step") for group in groups if "schedule_step" in group]
        for group, current in zip(groups, self.param_groups):
            # A corrupt option is refused even where it would not be used; then how this
            # optimizer stores its states (its constructor's choice for this machine: 8-bit
            # moments to fit a small GPU, say) is kept, and the loaded states converted to it.
            self._check_group_options({**current, **group})
            group.update({key: current[key] for key in STORAGE_OPTIONS if key in current})
        state_dict["param_groups"] = groups
        if counter is None and group_counters:
            counter = max(group_counters)
        super().load_state_dict(state_dict)
        try:  # the loaded hyperparameters, before the conversions below use them
            self._check_groups()
        except ValueError as error:  # e.g. a loaded amsgrad=True beside this optimizer's 8-bit states
            raise ValueError(
                f"{error} (the loaded state dict's param groups, with this optimizer's storage options "
                f"{', '.join(STORAGE_OPTIONS)})"
            ) from None
        # torch casts every floating state to its param's dtype on load; an fp32 master copy
        # and fp32 or bf16 moments beside bf16 params keep the dtype they were saved in.
        saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        params = [p for group in self.param_groups for p in group["params"]]
        for index, param in zip(saved_ids, params):
            for name, saved in state_dict["state"].get(index, {}).items():
                if name != "step" and isinstance(saved, torch.Tensor) and saved.dtype != param.dtype:
                    self.state[param][name] = saved.to(device=param.device, copy=True)
        owners = {param: group for group in self.param_groups for param in group["params"]}
        for param, state in self.state.items():
            if param in owners and not _distributed.is_dtensor(param):  # 8-bit moments in, or out
                group = owners[param]
                _quantized.convert_state_(state, param, group, _precision.state_dtype(param, group))
                _relay_like_param_(state, param)
            if "step" in state:
                # torch keeps a non-capturable step on the CPU; the kernels read it on the
                # param's device.
                state["step"] = _state_dict.step_tensor(state["step"], param.device)
        device = self._schedule_step.device
        if counter is not None:
            self._schedule_step = _state_dict.counter_tensor(counter, device)
        else:
            # A torch.optim state dict has no counter: the most-updated parameter tells.
            steps = [s["step"].to(device) for s in self.state.values() if "step" in s]
            self._schedule_step = (
                torch.stack(steps).max().to(torch.int64) if steps else torch.zeros((), dtype=torch.int64, device=device)
            )
        self._host_step = 0 if device.type == "meta" else int(self._schedule_step.item())
        self._plan_cache = None
        self._step_cache = None
        if not group_counters:  # not saved by fusedlr: a torch scheduler's lr and initial_lr, if any
            _torch_migration.continue_torch_schedule(self)


def _relay_like_param_(state: dict, param: torch.Tensor) -> None:
    """States saved beside a param of another memory layout (a channels_last model's checkpoint
    loaded into a contiguous one) laid out as ``param``, which the kernel backends need: element
    states are copied as they are; 8-bit moments, whose blocks follow memory order, are decoded
    and encoded again (one quantisation, as any conversion)."""
    if not _quantized._is_dense(param):
        return
    for name, value in list(state.items()):
        if isinstance(value, torch.Tensor) and value.shape == param.shape and value.stride() != param.stride():
            if name in _quantized.CODE_KEYS:
                _, scales, signed = _quantized.CODE_KEYS[name]
                moment = _quantized.decode(value, state[scales], signed)
                like = torch.empty_like(param, dtype=value.dtype)
                state[name], state[scales] = _quantized.encode(moment, like, signed)
            else:
                state[name] = torch.empty_like(param, dtype=value.dtype).copy_(value)
