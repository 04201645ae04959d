"""The optimizers' side of a distributed step: DTensor params stepped on their local shards,
the NormReduction of a step, and the states torch.distributed.checkpoint asks for (see
``_distributed.py`` for the collective itself)."""

from __future__ import annotations

import sys

import torch

from . import _distributed, _fused, _quantized, _split_master


def _called_to_make_states() -> bool:
    """Whether step() was called by torch.distributed.checkpoint's ``_init_optim_state``, which
    steps an optimizer with zero grads and lr 0 only to make its states before (re)loading them."""
    frame = sys._getframe(2)
    for _ in range(4):  # step's callers: torch's hook wrappers, then DCP
        if frame is None:
            return False
        code = frame.f_code
        if code.co_name == "_init_optim_state" and "checkpoint" in code.co_filename:
            return True
        frame = frame.f_back
    return False


class ShardedSteps:
    """DTensor and norm_group support of ``optim._FusedOptimizer`` (a mixin)."""

    def _check_norm_group(self) -> None:
        if self.norm_group is not None and any(g["agc_clip_factor"] is not None for g in self.param_groups):
            raise ValueError(
                "AGC (agc_clip_factor) cannot be combined with norm_group: AGC needs each tensor's full norm, "
                "and norm_group sums only the stages' totals"
            )
        if self.norm_group is not None and self._sharded:
            meshes = {p.device_mesh for p in self._flat_params if _distributed.is_dtensor(p)}
            key = frozenset(map(id, meshes))
            if self.__dict__.get("_checked_meshes") != key:  # rank sets read once per set of meshes
                _distributed.check_stage_group(self.norm_group, meshes)
                self._checked_meshes = key

    def _join_norm_group(self) -> None:
        """This rank's params have no grads this step (a frozen stage), but the other ranks of
        norm_group wait for it in their step's collective: it joins with nothing to add (the
        same collective as ``NormReduction.reduce_``), and reports the global norm too. No
        update, so its counter does not advance."""
        # GradScaler sets found_inf on every rank it steps (the int 0 where there were no grads
        # to check), and then every rank's step reduces it: present means join.
        found_inf = getattr(self, "found_inf", None)
        norms = self.max_grad_norm is not None or self.skip_nonfinite
        if not norms and found_inf is None:
            return  # the others reduce nothing either
        device = _distributed.local(self._flat_params[0]).device
        if found_inf is not None and not isinstance(found_inf, torch.Tensor):
            found_inf = torch.tensor(float(found_inf), device=device)
        # The collective of a step with one tensor whose sums are zero: adds nothing.
        sumsq = torch.zeros(3, dtype=torch.float64, device=device)
        _distributed.NormReduction([], [False], self.norm_group, device).reduce_(sumsq, 1, found_inf, norms=norms)
        if norms:
            self.last_grad_norm = sumsq[0].sqrt().to(torch.float32)

    def _local_items(self, params, grads):
        """Params and grads as the kernels and reference.py see them (the local shards of
        DTensors, checked against their params' placements first), and the optimizer's params
        they stand for (None when nothing is sharded: then they are those params)."""
        if not self._sharded:
            return params, grads, None
        name = type(self).__name__
        # States are checked again only when one changed (the state counts its changes).
        version = getattr(self.state, "version", None)
        check_states = version is None or version != self._checked_state_version
        no_state = {}
        for param, grad in zip(params, grads):
            if _distributed.is_dtensor(param):
                state = self.state.get(param, no_state) if check_states else no_state
                _distributed.check_sharded(param, grad, state, name)
            elif _distributed.is_dtensor(grad):
                raise RuntimeError(f"{name}: a plain parameter has a DTensor {self.grad_attribute}")
        self._checked_state_version = version
        local = _distributed.local
        return [local(p) for p in params], [local(g) for g in grads], params

    def _local_state(self, param, group) -> dict:
        """The param's state made ready (``_init_state``); for a DTensor param, a dict of its
        states' local shards (``step`` is a plain tensor, shared)."""
        state = self._init_state(param, group)
        if not _distributed.is_dtensor(param):
            return state
        return {name: _distributed.local(value) for name, value in state.items()}

    def _reduction(self, params, order=None):
        """The NormReduction for ``params`` (sums' row order; ``order``: their indices in it), or
        None on one process."""
        if not self._sharded and self.norm_group is None:
            return None
        if order is not None:
            params = [params[i] for i in order]
        key = [id(p) for p in params] + [bool(g["replicated"]) for g in self.param_groups]
        if self._reduction_cache is None or self._reduction_cache[0] != key:
            owners = {id(p): g for g in self.param_groups for p in g["params"]}
            replicated = [bool(owners[id(p)]["replicated"]) for p in params]
            device = _distributed.local(params[0]).device
            reduction = _distributed.NormReduction(params, replicated, self.norm_group, device)
            self._reduction_cache = (key, reduction)
        return self._reduction_cache[1]

    def _state_view(self, pairs, sources):
        """The states the checks read, keyed by what the kernels address."""
        if sources is None:
            return self.state
        local = _distributed.local
        return {
            p: {name: local(value) for name, value in self.state.get(s, {}).items()}
            for (p, _), s in zip(pairs, sources)
        }

    def _make_states(self) -> None:
        """The states of the params with grads, as the first step makes them, with no update:
        what torch.distributed.checkpoint asks of a step with zero grads and lr 0 (a real step
        would advance the schedule counter, and an absolute schedule would move the params)."""
        params, grads, counts = self._active()
        _quantized.check_step(self.param_groups, self._sharded)
        _split_master.check_step(self.param_groups, self._sharded)
        local_params, grads, sources = self._local_items(params, grads)
        pairs = self._with_groups(local_params, counts)
        for (param, group), grad in zip(pairs, grads):
            self._check_param(param, grad, group)
        _fused.check_states(pairs, self._state_view(pairs, sources))
        made = {}
        for (_, group), source in zip(pairs, sources or params):
            fresh = not self.state.get(source)
            state = self._init_state(source, group)
            kept = [key for key in _WEIGHT_COPIES if key in state]
            if fresh and kept:
                made[id(source)] = (_fingerprint(source), {key: _fingerprint(state[key]) for key in kept})
        # Checked when the states are loaded (``check_made_states``); a real step drops it.
        self._made_for_load = made

    def check_made_states(self) -> None:
        """After a load that followed DCP's state-making step: a master copy or split residual
        that still holds what that step made (from the weights before they were loaded) was not
        in the checkpoint (a partial load, ``allow_partial_load=True``, of a run saved without
        one: DCP fills the states this optimizer made, by key, and converts nothing). It is made
        again from the loaded weights, as loading a state dict without one does. Each rank looks
        at its own shards only: no collective, nothing raised on one rank alone. (Moments cannot
        be told apart so: a moment of a param whose grads were all zero stays zero, as made.)"""
        made = self.__dict__.pop("_made_for_load", None)
        if not made:
            return
        for param, state in self.state.items():
            if id(param) not in made:
                continue
            param_print, prints = made[id(param)]
            if _fingerprint(param) == param_print:
                continue  # the weights were not loaded either: nothing to tell
            for key, made_print in prints.items():
                if key in state and _fingerprint(state[key]) == made_print:
                    local = _distributed.local(state[key])
                    if key == "master_param":
                        local.copy_(_distributed.local(param).detach())
                    else:
                        local.zero_()


# The states made from the weights (an fp32 master copy, a split residual): what a load that
# did not fill them must make again from the loaded weights.
_WEIGHT_COPIES = ("master_param", _split_master.RESIDUAL_KEY)


def _fingerprint(tensor) -> tuple:
    """Enough of a tensor's values to tell whether a load wrote it: its nonzero count and, for
    floating point, its float64 sum of squares (taken slice by slice, no whole-tensor copy)."""
    if not isinstance(tensor, torch.Tensor):
        return (tensor,)
    tensor = _distributed.local(tensor).detach()
    if tensor.numel() == 0 or tensor.device.type == "meta":
        return (0,)
    nonzero = int(torch.count_nonzero(tensor))
    if not tensor.is_floating_point():
        return (nonzero, int(tensor.sum(dtype=torch.int64)))
    from .reference import _sumsq

    return (nonzero, float(_sumsq(tensor)))
