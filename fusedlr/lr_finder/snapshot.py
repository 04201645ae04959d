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

# fusedlr optimizer attributes the range test changes: device tensors restored in place, and
# plain attributes restored by reference.
_FUSED_TENSORS = ("_schedule_step", "skipped_steps")
_FUSED_ATTRIBUTES = ("_host_step", "schedule", "last_grad_norm")


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


def _save(value, to):
    return _SavedTensor(value, to) if isinstance(value, torch.Tensor) else copy.deepcopy(value)


def _load(saved):
    return saved.put_back() if isinstance(saved, _SavedTensor) else copy.deepcopy(saved)


class TrainingSnapshot:
    """Model parameters, buffers, grads and train/eval flags; optimizer states, param groups and
    fusedlr's schedule counter; a GradScaler's state; the torch (CPU and CUDA), Python and numpy
    random states. ``to="cpu"`` (default) keeps the copies in host memory (one extra copy of the
    model and optimizer state there); ``to="device"`` keeps them beside the originals (faster to
    take and restore, costs device memory)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, grad_scaler=None, to="cpu"):
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
        self._training = [(module, module.training) for module in model.modules()]

        self._groups = list(optimizer.param_groups)
        self._group_values = [
            {key: copy.deepcopy(value) for key, value in group.items() if key != "params"} for group in self._groups
        ]
        self._group_params = [list(group["params"]) for group in self._groups]
        self._states = {
            p: {key: _save(value, to) for key, value in state.items()} for p, state in optimizer.state.items()
        }
        self._fused = {
            name: _SavedTensor(getattr(optimizer, name), to) for name in _FUSED_TENSORS if hasattr(optimizer, name)
        }
        self._fused_attrs = {name: getattr(optimizer, name) for name in _FUSED_ATTRIBUTES if hasattr(optimizer, name)}

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
        for param, saved in self._grads:
            param.grad = None if saved is None else saved.put_back()
        for module, training in self._training:
            module.training = training

        optimizer = self.optimizer
        optimizer.param_groups[:] = self._groups
        for group, values, params in zip(self._groups, self._group_values, self._group_params):
            group.clear()
            group.update(copy.deepcopy(values))
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
        for name, saved in self._fused.items():
            setattr(optimizer, name, saved.put_back())
        for name, value in self._fused_attrs.items():
            setattr(optimizer, name, value)
        if hasattr(optimizer, "_step_cache"):
            optimizer._step_cache = None  # its tables are checked afresh at the next step

        if self._scaler is not None:
            for name, saved in self._scaler.items():
                setattr(self.grad_scaler, name, _load(saved))
            if self._scaler_per_optimizer is not None:
                self.grad_scaler._per_optimizer_states = self._scaler_per_optimizer

        torch.set_rng_state(self._torch_rng)
        if self._cuda_rng is not None:
            torch.cuda.set_rng_state_all(self._cuda_rng)
        random.setstate(self._python_rng)
        numpy = sys.modules.get("numpy")
        if self._numpy_rng is not None and numpy is not None:
            numpy.random.set_state(self._numpy_rng)
