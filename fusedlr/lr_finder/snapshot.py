"""A copy of everything a range test changes, put back bit for bit.

The range test trains the real model with the real optimizer, so afterwards (also after an
exception or Ctrl-C) it must leave them exactly as it found them. Not doing so is the most
reported complaint about torch-lr-finder, Lightning's and fastai's finders. Restoring copies
values *into the original tensor objects* (params, buffers, grads, optimizer states, fusedlr's
counters), so references the caller holds, and the fused backends' cached device addresses,
stay valid.
"""

from __future__ import annotations

import copy
import random
import sys

import torch

# Caches a fusedlr optimizer rebuilds by itself (as after load_state_dict): dropped on restore,
# since the test's steps may have filled them from states that the restore removes.
_CACHES = ("_step_cache", "_plan_cache")


class _SavedTensor:
    """The original tensor object and a copy of its values (on ``to``, or beside it)."""

    __slots__ = ("original", "values")

    def __init__(self, tensor: torch.Tensor, to):
        self.original = tensor
        device = tensor.device if to == "device" else torch.device(to)
        self.values = tensor.detach().to(device, copy=True)

    def put_back(self) -> torch.Tensor:
        with torch.no_grad():
            self.original.copy_(self.values)
        return self.original


class _SavedSequence:
    """A tuple or list holding tensors (tensor ``betas``): its tensors refilled in place, and the
    same container object given back."""

    __slots__ = ("original", "items")

    def __init__(self, sequence, to):
        self.original = sequence
        self.items = [_save(item, to) for item in sequence]

    def put_back(self):
        items = [_load(item) for item in self.items]
        if isinstance(self.original, list):
            self.original[:] = items
        return self.original


def _save(value, to):
    """Tensors (also in a tuple or list) are restored into the same objects, so that references
    the caller holds (a tensor ``lr``) stay valid; anything else is a deep copy."""
    if isinstance(value, torch.Tensor):
        return _SavedTensor(value, to)
    if isinstance(value, (tuple, list)) and any(isinstance(item, torch.Tensor) for item in value):
        return _SavedSequence(value, to)
    return copy.deepcopy(value)


def _load(saved):
    return saved.put_back() if isinstance(saved, (_SavedTensor, _SavedSequence)) else copy.deepcopy(saved)


class TrainingSnapshot:
    """Model parameters, buffers, grads and train/eval flags; the values of optimizer params that
    are not in the model; optimizer states, param groups and the optimizer's own attributes
    (fusedlr's schedule counter, Schedule-Free's running sums, ...); a GradScaler's state; the
    torch (CPU and CUDA), Python and numpy random states, and ``generators`` (a DataLoader's own
    shuffling generator). ``to="cpu"`` (default) keeps the copies in host memory (one extra copy of the
    model and optimizer state there); ``to="device"`` keeps them beside the originals (faster to
    take and restore, costs device memory)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, grad_scaler=None, to="cpu",
                 generators=()):  # fmt: skip
        if to not in ("cpu", "device"):
            raise ValueError(f"Invalid snapshot location: {to!r} (expected 'cpu' or 'device')")
        self.model, self.optimizer, self.grad_scaler = model, optimizer, grad_scaler
        # Tensors by (module, slot, name): a tensor the test replaced is put back, not just refilled.
        self._module_tensors = []
        copies = {}  # one copy per tensor: tied weights (an lm_head sharing the embedding) are saved once
        for module in model.modules():
            for slot in ("_parameters", "_buffers"):
                for name, tensor in getattr(module, slot).items():
                    if tensor is not None:
                        if id(tensor) not in copies:
                            copies[id(tensor)] = _SavedTensor(tensor, to)
                        self._module_tensors.append((module, slot, name, copies[id(tensor)]))
        params = list(model.parameters()) + [p for g in optimizer.param_groups for p in g["params"]]
        params = list({id(p): p for p in params}.values())
        self._grads = [(p, None if p.grad is None else _SavedTensor(p.grad, to)) for p in params]
        # Optimizer params outside the model (a learnable temperature in the loss): values too.
        self._other_params = [_SavedTensor(p, to) for p in params if id(p) not in copies]
        self._training = [(module, module.training) for module in model.modules()]

        self._groups = list(optimizer.param_groups)
        self._group_values = [{key: _save(value, to) for key, value in group.items() if key != "params"}
                              for group in self._groups]  # fmt: skip
        self._group_params = [list(group["params"]) for group in self._groups]
        self._states = {
            p: {key: _save(value, to) for key, value in state.items()} for p, state in optimizer.state.items()
        }
        # Every attribute of the optimizer, by reference (state and param_groups are refilled
        # above), and the values of its tensors (fusedlr's counters, Schedule-Free's running
        # sums): the restore puts back this exact set of attributes, so one that a step left
        # behind (GradScaler's grad_scale / found_inf after an interrupt inside step) goes.
        self._attributes = dict(vars(optimizer))
        self._attribute_tensors = [
            _SavedTensor(value, to) for value in self._attributes.values() if isinstance(value, torch.Tensor)
        ]
        self._generators = [(generator, generator.get_state()) for generator in generators]

        self._scaler = None
        if grad_scaler is not None:
            self._scaler = {
                name: _save(getattr(grad_scaler, name), to)
                for name in ("_scale", "_growth_tracker", "_init_scale", "_init_growth_tracker")
                if hasattr(grad_scaler, name)
            }
            self._scaler_per_optimizer = copy.copy(getattr(grad_scaler, "_per_optimizer_states", None))

        self._torch_rng = torch.get_rng_state()
        self._cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        self._python_rng = random.getstate()
        numpy = sys.modules.get("numpy")
        self._numpy_rng = numpy.random.get_state() if numpy is not None else None

    @torch.no_grad()
    def restore(self) -> None:
        """Put everything back as it was when the snapshot was taken."""
        for module, slot, name, saved in self._module_tensors:
            getattr(module, slot)[name] = saved.put_back()
        for saved in self._other_params:
            saved.put_back()
        for param, saved in self._grads:
            param.grad = None if saved is None else saved.put_back()
        for module, training in self._training:
            module.training = training

        optimizer = self.optimizer
        attributes = vars(optimizer)
        for name in [name for name in attributes if name not in self._attributes]:
            del attributes[name]  # attributes the test left behind
        attributes.update(self._attributes)
        for saved in self._attribute_tensors:
            saved.put_back()
        for name in _CACHES:
            if name in attributes:
                attributes[name] = None

        optimizer.param_groups[:] = self._groups
        for group, values, params in zip(self._groups, self._group_values, self._group_params):
            group.clear()
            group.update({key: _load(saved) for key, saved in values.items()})
            group["params"] = params
        state = optimizer.state
        for param in [p for p in state if p not in self._states]:
            del state[param]  # states the test created
        for param, saved_state in self._states.items():
            current = state[param]
            for key in [k for k in current if k not in saved_state]:
                del current[key]
            for key, saved in saved_state.items():
                value = _load(saved)
                if current.get(key) is not value:
                    current[key] = value

        if self._scaler is not None:
            for name, saved in self._scaler.items():
                setattr(self.grad_scaler, name, _load(saved))
            if self._scaler_per_optimizer is not None:
                self.grad_scaler._per_optimizer_states = self._scaler_per_optimizer

        torch.set_rng_state(self._torch_rng)
        if self._cuda_rng is not None:
            torch.cuda.set_rng_state_all(self._cuda_rng)
        for generator, state in self._generators:
            generator.set_state(state)
        random.setstate(self._python_rng)
        numpy = sys.modules.get("numpy")
        if self._numpy_rng is not None and numpy is not None:
            numpy.random.set_state(self._numpy_rng)
