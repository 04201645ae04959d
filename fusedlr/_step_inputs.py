"""What one step works on: the params that have grads (each read once), their groups and
positions, each param and grad checked, and each param's state created or brought in line with
its group's precision options after every check has passed."""

from __future__ import annotations

import torch

from . import _distributed, _precision, _quantized, _split_master


def _shares_elements(tensor: torch.Tensor) -> bool:
    """True for a tensor two of whose elements are one memory location (``expand``, stride 0)."""
    overlap = getattr(torch, "_debug_has_internal_overlap", None)
    if overlap is not None:
        return overlap(tensor) == 1  # 0: none, 2: too complex to tell (then the in-place op decides)
    return any(stride == 0 and size > 1 for stride, size in zip(tensor.stride(), tensor.shape))


class StepInputs:
    """Mixin of ``_FusedOptimizer``: the inputs of a step, checked, and the states it reads."""

    def _active(self):
        """Params with a grad and their grads (each ``.grad`` read once: a read costs), with
        the number of them in each param group, in group order."""
        params, grads, counts = [], [], []
        for group in self.param_groups:
            group_params = group["params"]
            if self.grad_attribute == "grad":
                group_grads = [p.grad for p in group_params]
            else:
                group_grads = [getattr(p, self.grad_attribute, None) for p in group_params]
            if not all(g is not None for g in group_grads):
                kept = [(p, g) for p, g in zip(group_params, group_grads) if g is not None]
                group_params, group_grads = [p for p, _ in kept], [g for _, g in kept]
            params += group_params
            grads += group_grads
            counts.append(len(group_params))
        return params, grads, counts

    def _with_groups(self, params, counts):
        """``(param, group)`` pairs from ``_active``'s flat lists."""
        owners = [group for group, count in zip(self.param_groups, counts) for _ in range(count)]
        return list(zip(params, owners))

    def _positions(self, params) -> list[int]:
        """Each param's index among all of the optimizer's params (or their local shards): with
        the seed and the update index it keys stochastic rounding's random stream, whichever
        params have grads."""
        flat = [p for group in self.param_groups for p in group["params"]]
        index = {id(p): i for i, p in enumerate(flat)}
        if self._sharded:
            index.update({id(_distributed.local(p)): i for i, p in enumerate(flat)})
        return [index[id(p)] for p in params]

    def _check_param(self, param: torch.Tensor, grad: torch.Tensor, group: dict) -> None:
        name = type(self).__name__
        if not isinstance(grad, torch.Tensor):
            raise RuntimeError(f"{name}: {self.grad_attribute} of a parameter is a {type(grad).__name__}, not a tensor")
        if grad.is_sparse:
            raise RuntimeError(f"{name} does not support sparse gradients")
        if torch.is_complex(param) or not param.is_floating_point():
            raise RuntimeError(f"{name} supports real floating-point parameters only; got dtype {param.dtype}")
        if _shares_elements(param):
            raise RuntimeError(
                f"{name}: a parameter of shape {tuple(param.shape)} with strides {param.stride()} has elements that "
                "share memory (an expanded tensor?), so an in-place update cannot write it; clone it first"
            )
        if grad.shape != param.shape:
            raise RuntimeError(
                f"{name}: grad of shape {tuple(grad.shape)} for a parameter of shape {tuple(param.shape)}"
            )
        if grad.device != param.device:
            raise RuntimeError(f"{name}: grad on {grad.device} for a parameter on {param.device}")
        _precision.check_param_options(param, grad, group, name)

    def _init_state(self, param: torch.Tensor, group: dict) -> dict:
        """The param's state, created on its first step, then brought in line with the group's
        precision options (a changed state_dtype casts the moments; master_weights adds or
        drops the fp32 copy). Runs only after every check has passed."""
        state = self.state[param]
        dtype = _precision.state_dtype(param, group)
        if not state:
            if self._kind == "adamw":
                state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
            for name in self._state_names:
                if name in _quantized.QUANTIZED_KEYS and _quantized.quantizes(param, group):
                    state.update(_quantized.zero_moment(name, param))
                else:
                    state[name] = torch.zeros_like(param, dtype=dtype, memory_format=torch.preserve_format)
        _quantized.convert_state_(state, param, group, dtype)  # 8-bit moments in, or out
        if group.get("amsgrad") and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = torch.zeros_like(param, dtype=dtype, memory_format=torch.preserve_format)
        for name in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            if name in state and state[name].dtype != dtype:
                state[name] = state[name].to(dtype)
        _split_master.convert_state_(state, param, group, _precision.has_master(param, group))
        if _precision.has_master(param, group):
            if "master_param" not in state:
                master = torch.empty_like(param, dtype=torch.float32, memory_format=torch.preserve_format)
                state["master_param"] = master.copy_(param.detach())
        elif "master_param" in state:
            del state["master_param"]  # master_weights turned off: the param is the weight again
        return state
