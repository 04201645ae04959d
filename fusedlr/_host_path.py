"""The cached host path of a kernel-backend step: what lets a step with thousands of tensors
check its inputs and find its device tables at a few attribute reads per tensor while nothing
changed (README: "Host path")."""

from __future__ import annotations

import operator
import weakref

import torch

from . import _fused
from ._state import StateTable as _StateTable

# What the kernels' tables assume of a grad, beside its address (its class: a tensor subclass
# may not hold its data at its address).
_LAYOUT = operator.attrgetter("__class__", "layout", "dtype", "device", "shape")


def _structure(group) -> tuple:
    """The group options that decide which states exist and how the kernels store them."""
    return (bool(group.get("amsgrad")), group["master_weights"], group["stochastic_rounding"], group["state_dtype"])


class _StepCache:
    """What a kernel-backend step leaves for the next one to reuse."""

    __slots__ = ("key", "items", "sources", "grad_refs", "grad_layouts", "grad_strides")

    def __init__(self, key, items, grads, sources):
        self.key = key  # a list: compared whole, at C speed
        self.items = items
        self.sources = sources  # the optimizer's params of items (DTensors where sharded)
        # Weak references: holding last step's grads would keep zero_grad()'s old ones alive.
        self.grad_refs = [weakref.ref(g) for g in grads]
        # Layouts of grads that passed the precise checks: a new grad laid out the same passes too
        # (while the key shows the params unchanged).
        self.grad_layouts = list(map(_LAYOUT, grads))
        self.grad_strides = list(map(torch.Tensor.stride, grads))

    def same_grads(self, grads) -> bool:
        refs = self.grad_refs
        return len(refs) == len(grads) and all([r() is g for r, g in zip(refs, grads)])

    def grads_like_last_step(self, grads) -> bool:
        """New grad objects laid out exactly as last step's checked ones (checked again in full
        when the key shows a param changed)."""
        try:
            return (
                list(map(_LAYOUT, grads)) == self.grad_layouts
                and list(map(torch.Tensor.stride, grads)) == self.grad_strides
            )
        except (AttributeError, TypeError):  # not a tensor: the precise checks say so
            return False


class CachedChecks:
    """The optimizers' ``_kernel_items`` (a mixin of ``optim._FusedOptimizer``)."""

    def _kernel_items(self, params, grads, counts, backend, sources):
        """``(param, group, state)`` for the kernel backends, validated, and the key of the plan
        that holds their addresses, at a few attribute reads per tensor when nothing changed.
        ``params`` and ``grads`` are what the kernels address (local shards of DTensors, whose
        optimizer params are ``sources``; None when nothing is sharded).

        Grads that are not last step's objects (``zero_grad()`` makes new ones each step) are
        compared with their params' layouts in a few C-speed list comparisons. The key holds
        every param and grad address and size, the group structure and the state's version
        (``_state.StateTable``): when any of them changed, everything is checked again and the
        states are initialised, before anything is modified.
        """
        kernels = backend != "cpu"
        cache = self._step_cache
        grad_refs = None
        pairs = None  # (param, group): built only where something is checked
        if cache is not None and cache.same_grads(grads):
            grad_refs = cache.grad_refs
        elif cache is None or not cache.grads_like_last_step(grads):
            # The precise checks, and their error messages, before any address is read.
            pairs = self._with_groups(params, counts)
            for (param, group), grad in zip(pairs, grads):
                self._check_param(param, grad, group)
                if kernels:
                    _fused.check_addressable(param, grad)
                    _fused.check_grad(param, grad)
        key = [p.data_ptr() for p in params]
        key += [g.data_ptr() for g in grads]
        key += [p.numel() for p in params]
        key += counts
        key += [id(group) for group in self.param_groups]
        key += [_structure(group) for group in self.param_groups]
        key.append(backend)
        key.append(getattr(self.state, "version", None))
        if cache is not None and cache.key == key:
            if grad_refs is None:
                cache.grad_refs = [weakref.ref(g) for g in grads]
            return cache.items
        else:
            if not isinstance(self.state, _StateTable):  # replaced, or copied: track it again
                self.state = _StateTable(self.state)
            pairs = pairs or self._with_groups(params, counts)
            for (param, group), grad in zip(pairs, grads):
                self._check_param(param, grad, group)
            state_view = self._state_view(pairs, sources)
            if kernels:
                _fused.check_inputs(pairs, grads, {p.device for p in params}, state_view, required=self._required_state)
            else:  # the cpu backend: the torch backend's checks (any layout, any device mix)
                _fused.check_states(pairs, state_view, required=self._required_state)
            self._check_groups()  # before states are made (later steps: _fused.prepare reads the values)
            items = [(p, group, self._local_state(s, group)) for (p, group), s in zip(pairs, sources or params)]
            key[-1] = self.state.version  # after the states were made
        self._step_cache = _StepCache(key, items, grads, sources or params)
        return items
