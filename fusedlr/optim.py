"""The user-facing optimizers: validation, param groups, state and state_dict. No math here.

The math lives in ``reference.py`` (backend ``torch``) and ``_triton/`` (backend ``triton``);
this file decides which runs, checks every input before either touches anything, and keeps
the state in the layout ``torch.optim.AdamW`` uses so that state dicts travel both ways.
"""

from __future__ import annotations

import math
import operator
import sys
import weakref
from numbers import Real

import torch

from . import _backends, _compile, _distributed, _fused, _precision, _quantized, _split_master, reference
from ._state import StateTable as _StateTable
from .schedules import Schedule, check_schedule


def _check_real(name: str, value, *, low: float, low_inclusive: bool = True, high: float | None = None):
    ok = isinstance(value, Real) and not isinstance(value, bool) and not math.isnan(value)
    if ok:
        ok = value >= low if low_inclusive else value > low
    if ok and high is not None:
        ok = value < high
    if not ok:
        raise ValueError(f"Invalid {name}: {value}")


def _check_group_hypers(group: dict) -> None:
    _check_real("learning rate", group["lr"], low=0.0)
    if "eps" in group:
        _check_real("epsilon value", group["eps"], low=0.0)
    betas = group["betas"]
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise ValueError(f"Invalid betas: {betas!r} (expected a pair of floats)")
    for i, beta in enumerate(betas):
        if not (isinstance(beta, Real) and 0.0 <= beta < 1.0):
            raise ValueError(f"Invalid beta parameter at index {i}: {beta}")
    _check_real("weight_decay value", group["weight_decay"], low=0.0)
    factor = group["agc_clip_factor"]
    if factor is not None:
        _check_real("agc_clip_factor", factor, low=0.0, low_inclusive=False)
    _check_real("agc_eps", group["agc_eps"], low=0.0, low_inclusive=False)


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
        return (
            list(map(_LAYOUT, grads)) == self.grad_layouts
            and list(map(torch.Tensor.stride, grads)) == self.grad_strides
        )


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


class _FusedOptimizer(torch.optim.Optimizer):
    """Shared machinery of AdamW and Lion: everything but the per-kind state and checks."""

    _kind: str  # "adamw" or "lion": selects the update rule in every backend
    # torch.amp.GradScaler hands us `grad_scale` and `found_inf` and lets us unscale and skip
    # inside the fused passes, instead of unscaling every grad in place first.
    _step_supports_amp_scaling = True

    def __init__(self, params, defaults: dict, *, schedule, max_grad_norm, skip_nonfinite, backend: str,
                 grad_attribute: str = "grad", clip_value: float | None = None, norm_group=None):  # fmt: skip
        # Params that are the same on every rank of norm_group: counted once in the norm.
        defaults.setdefault("replicated", False)
        _check_group_hypers(defaults)
        _precision.check_group_options(defaults)
        check_schedule(schedule)
        if not isinstance(grad_attribute, str) or not grad_attribute.isidentifier():
            raise ValueError(f"Invalid grad_attribute: {grad_attribute!r}")
        # Where each step reads a param's gradient: "grad", or e.g. "main_grad" for the float32
        # accumulation buffers that bf16 training keeps beside each param (torch refuses an
        # fp32 .grad on a bf16 param).
        self.grad_attribute = grad_attribute
        if max_grad_norm is not None:
            _check_real("max_grad_norm", max_grad_norm, low=0.0, low_inclusive=False)
        if clip_value is not None:
            _check_real("clip_value", clip_value, low=0.0, low_inclusive=False)
        _backends.check_backend_name(backend)
        self.schedule = schedule
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        # Every grad element clamped to [-clip_value, clip_value] before AGC and the norm
        # (clip_grad_value_ then clip_grad_norm_), in registers.
        self.clip_value = None if clip_value is None else float(clip_value)
        self.backend = backend
        self.skip_nonfinite = bool(skip_nonfinite)
        # Ranks over which the norm's total is summed as well (pipeline stages, plain-tensor
        # model parallelism); see fusedlr/_distributed.py.
        self.norm_group = _distributed.resolve_norm_group(norm_group)
        self._reduction_cache = None  # (key, NormReduction) of the last step that needed one
        self.last_grad_norm: torch.Tensor | None = None
        self._plan_cache = None  # owned by the kernel backends; dropped on load_state_dict
        self._step_cache = None  # _StepCache of the last kernel-backend step
        super().__init__(params, defaults)
        self.state = _StateTable(self.state)
        self._compile_handle = _compile.register(self)  # names this optimizer inside compiled graphs
        device = self.param_groups[0]["params"][0].device
        # The schedule counter: updates applied so far. It lives on the device so that the
        # kernels read and advance it without the host; `_host_step` mirrors it for schedules
        # that are plain Python callables (evaluated on the host).
        self._schedule_step = torch.zeros((), dtype=torch.int64, device=device)
        self._host_step = 0
        # Steps skipped on the device (GradScaler's found_inf, or skip_nonfinite): read it when you log.
        self.skipped_steps = torch.zeros((), dtype=torch.int64, device=device)

    # ----- param groups -------------------------------------------------------------------
    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        _check_group_hypers(self.param_groups[-1])
        _precision.check_group_options(self.param_groups[-1])
        self._flat_params = [p for group in self.param_groups for p in group["params"]]
        self._sharded = any(map(_distributed.is_dtensor, self._flat_params))
        self._checked_state_version = None
        self._plan_cache = None
        self._step_cache = None
        if hasattr(self, "norm_group"):  # (not yet while the base __init__ adds the first groups)
            self._check_norm_group()

    def _check_norm_group(self) -> None:
        if self.norm_group is not None and any(g["agc_clip_factor"] is not None for g in self.param_groups):
            raise ValueError(
                "AGC (agc_clip_factor) cannot be combined with norm_group: AGC needs each tensor's full norm, "
                "and norm_group sums only the stages' totals"
            )

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("norm_group", None)
        self._reduction_cache = None
        self.state = _StateTable(self.state)
        self._flat_params = [p for group in self.param_groups for p in group["params"]]
        self._sharded = any(map(_distributed.is_dtensor, self._flat_params))
        self._checked_state_version = None
        self._compile_handle = _compile.register(self)
        self.__dict__.setdefault("clip_value", None)  # optimizers pickled before clip_value existed
        # Groups loaded from a torch.optim state dict lack our keys: fill them from defaults.
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)

    # ----- the step -----------------------------------------------------------------------
    def _check_param(self, param: torch.Tensor, grad: torch.Tensor, group: dict) -> None:
        name = type(self).__name__
        if not isinstance(grad, torch.Tensor):
            raise RuntimeError(f"{name}: {self.grad_attribute} of a parameter is a {type(grad).__name__}, not a tensor")
        if grad.is_sparse:
            raise RuntimeError(f"{name} does not support sparse gradients")
        if torch.is_complex(param) or not param.is_floating_point():
            raise RuntimeError(f"{name} supports real floating-point parameters only; got dtype {param.dtype}")
        if grad.shape != param.shape:
            raise RuntimeError(
                f"{name}: grad of shape {tuple(grad.shape)} for a parameter of shape {tuple(param.shape)}"
            )
        if grad.device != param.device:
            raise RuntimeError(f"{name}: grad on {grad.device} for a parameter on {param.device}")
        _precision.check_param_options(param, grad, group, name)

    _state_names: tuple[str, ...]  # the moment tensors of this kind, stored in state_dtype

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

    def _local_items(self, params, grads, counts):
        """``(param, group, state)`` and grads as the kernels and reference.py see them: the local
        shards of DTensors (states included), checked against their params' placements first."""
        pairs = self._with_groups(params, counts)
        if not self._sharded:
            return pairs, grads, None
        name = type(self).__name__
        # States are checked again only when one changed (the state counts its changes).
        version = getattr(self.state, "version", None)
        check_states = version is None or version != self._checked_state_version
        no_state = {}
        for (param, _), grad in zip(pairs, grads):
            if _distributed.is_dtensor(param):
                state = self.state.get(param, no_state) if check_states else no_state
                _distributed.check_sharded(param, grad, state, name)
            elif _distributed.is_dtensor(grad):
                raise RuntimeError(f"{name}: a plain parameter has a DTensor {self.grad_attribute}")
        self._checked_state_version = version
        local = _distributed.local
        return [(local(p), group) for p, group in pairs], [local(g) for g in grads], params

    def _local_state(self, param, group) -> dict:
        """The param's state made ready (``_init_state``); for a DTensor param, a dict of its
        states' local shards (``step`` is a plain tensor, shared)."""
        state = self._init_state(param, group)
        if not _distributed.is_dtensor(param):
            return state
        return {name: _distributed.local(value) for name, value in state.items()}

    def _reduction(self, params):
        """The NormReduction for ``params`` (sums' row order), or None on one process."""
        if not self._sharded and self.norm_group is None:
            return None
        key = [id(p) for p in params] + [bool(g["replicated"]) for g in self.param_groups]
        if self._reduction_cache is None or self._reduction_cache[0] != key:
            owners = {id(p): g for g in self.param_groups for p in g["params"]}
            replicated = [bool(owners[id(p)]["replicated"]) for p in params]
            device = _distributed.local(params[0]).device
            reduction = _distributed.NormReduction(params, replicated, self.norm_group, device)
            self._reduction_cache = (key, reduction)
        return self._reduction_cache[1]

    def _kernel_items(self, pairs, grads, counts, backend, sources):
        """``(param, group, state)`` for the kernel backends, validated, and the key of the plan
        that holds their addresses, at a few attribute reads per tensor when nothing changed.
        ``pairs`` and ``grads`` are what the kernels address (local shards of DTensors, whose
        optimizer params are ``sources``; None when nothing is sharded).

        Grads that are not last step's objects (``zero_grad()`` makes new ones each step) are
        compared with their params' layouts in a few C-speed list comparisons. The key holds
        every param and grad address and size, the group structure and the state's version
        (``_state.StateTable``): when any of them changed, everything is checked again and the
        states are initialised, before anything is modified.
        """
        cache = self._step_cache
        grad_refs = None
        params = [p for p, _ in pairs]
        if cache is not None and cache.same_grads(grads):
            grad_refs = cache.grad_refs
        elif cache is None or not cache.grads_like_last_step(grads):
            # The precise checks, and their error messages, before any address is read.
            for (param, group), grad in zip(pairs, grads):
                self._check_param(param, grad, group)
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
            for (param, group), grad in zip(pairs, grads):
                self._check_param(param, grad, group)
            _fused.check_inputs(pairs, grads, {p.device for p in params}, self._state_view(pairs, sources))
            items = [(p, group, self._local_state(s, group)) for (p, group), s in zip(pairs, sources or params)]
            key[-1] = self.state.version  # after the states were made
        self._step_cache = _StepCache(key, items, grads, sources or params)
        return items

    def _state_view(self, pairs, sources):
        """The states the checks read, keyed by what the kernels address."""
        if sources is None:
            return self.state
        local = _distributed.local
        return {
            p: {name: local(value) for name, value in self.state.get(s, {}).items()}
            for (p, _), s in zip(pairs, sources)
        }

    def _schedule_on_host(self) -> tuple[float, float]:
        """(scale, offset) of this update's lr, evaluated on the host (torch backend, callables)."""
        if self.schedule is None:
            return 1.0, 0.0
        if isinstance(self.schedule, Schedule):
            return self.schedule.scale_offset(self._host_step)
        return float(self.schedule(self._host_step)), 0.0

    @torch.no_grad()
    def step(self, closure=None):
        """One optimizer step. Returns ``closure()``'s loss when a closure is given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if torch.compiler.is_compiling():
            _compile.step_in_graph(self)  # one opaque op in the graph; it runs _eager_step
        elif closure is None and _called_to_make_states():
            self._make_states()
        else:
            self._eager_step()
        return loss

    def _make_states(self) -> None:
        """The states of the params with grads, as the first step makes them, with no update:
        what torch.distributed.checkpoint asks of a step with zero grads and lr 0 (a real step
        would advance the schedule counter, and an absolute schedule would move the params)."""
        params, grads, counts = self._active()
        _quantized.check_step(self.backend, self.param_groups, self._sharded)
        _split_master.check_step(self.backend, self.param_groups, self._sharded)
        pairs, grads, sources = self._local_items(params, grads, counts)
        for (param, group), grad in zip(pairs, grads):
            self._check_param(param, grad, group)
        _fused.check_states(pairs, self._state_view(pairs, sources))
        for (_, group), source in zip(pairs, sources or params):
            self._init_state(source, group)

    def _eager_step(self) -> None:
        # Everything is checked before anything is modified: a failed step changes nothing.
        params, grads, counts = self._active()
        if not params:
            return
        device = params[0].device
        backend = _backends.choose(self.backend, device)
        _quantized.check_step(backend, self.param_groups, self._sharded)
        _split_master.check_step(backend, self.param_groups, self._sharded)
        if self.norm_group is not None:
            self._check_norm_group()  # groups may have been edited since
        pairs, grads, sources = self._local_items(params, grads, counts)
        if backend in ("triton", "cuda"):
            items = self._kernel_items(pairs, grads, counts, backend, sources)
        else:
            for (param, group), grad in zip(pairs, grads):
                self._check_param(param, grad, group)
            _fused.check_states(pairs, self._state_view(pairs, sources))
            items = [(p, group, self._local_state(s, group)) for (p, group), s in zip(pairs, sources or params)]
        if self._schedule_step.device != device:  # the model moved after the optimizer was made
            self._schedule_step = self._schedule_step.to(device)
            self.skipped_steps = self.skipped_steps.to(device)
        if backend in ("triton", "cuda"):
            if backend == "triton":
                from ._triton import step_ as fused_step_
            else:
                from ._cuda import step_ as fused_step_

            device_schedule = isinstance(self.schedule, Schedule) or self.schedule is None
            host_multiplier = None if device_schedule else self._schedule_on_host()[0]
            active_groups = [group for group, count in zip(self.param_groups, counts) if count]
            self.last_grad_norm = fused_step_(self, items, grads, host_multiplier, self._step_cache.key, active_groups)
        else:
            scale, offset = self._schedule_on_host()
            self.last_grad_norm, applied = reference.step_(
                self._kind, items, grads, scale, offset, self.max_grad_norm,
                grad_scale=getattr(self, "grad_scale", None), found_inf=getattr(self, "found_inf", None),
                skip_nonfinite=self.skip_nonfinite, counter=self._schedule_step, clip_value=self.clip_value,
                positions=self._positions(params) if any(g["stochastic_rounding"] for g in self.param_groups) else None,
                reduction=self._reduction(params),
            )  # fmt: skip
            if applied:
                self._schedule_step += 1
            else:
                self.skipped_steps += 1
                return
        self._host_step += 1

    # ----- state dict ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        state_dict = super().state_dict()
        # Plain dicts, as torch's: a state dict holds no fusedlr type (weights_only loads).
        state_dict["state"] = {index: dict(state) for index, state in state_dict["state"].items()}
        state_dict["schedule_step"] = self._schedule_step.clone()
        # torch.distributed.checkpoint keeps only "state" and "param_groups": the counter travels
        # in every group too (a plain int, the same in each; removed again on load).
        counter = int(self._schedule_step.item())
        state_dict["param_groups"] = [dict(group, schedule_step=counter) for group in state_dict["param_groups"]]
        return state_dict

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        counter = state_dict.pop("schedule_step", None)
        groups = [dict(group) for group in state_dict["param_groups"]]
        group_counters = [group.pop("schedule_step") for group in groups if "schedule_step" in group]
        state_dict["param_groups"] = groups
        if counter is None and group_counters:
            counter = max(group_counters)
        super().load_state_dict(state_dict)
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
            if "step" in state:
                # torch keeps a non-capturable step on the CPU; the kernels read it on the
                # param's device. Copy, so we never step a tensor the caller still holds.
                state["step"] = torch.as_tensor(state["step"]).to(device=param.device, dtype=torch.float32, copy=True)
        device = self._schedule_step.device
        if counter is not None:
            self._schedule_step = torch.as_tensor(counter).to(device=device, dtype=torch.int64, copy=True)
        else:
            # A torch.optim state dict has no counter: the most-updated parameter tells.
            steps = [s["step"].to(device) for s in self.state.values() if "step" in s]
            self._schedule_step = (
                torch.stack(steps).max().to(torch.int64) if steps else torch.zeros((), dtype=torch.int64, device=device)
            )
        self._host_step = int(self._schedule_step.item())
        self._plan_cache = None
        self._step_cache = None


class AdamW(_FusedOptimizer):
    """AdamW with decoupled weight decay, fused global-norm/AGC clipping and device schedules.

    Same update as ``torch.optim.AdamW`` preceded by ``clip_grad_norm_`` (after AGC, when both
    are on), with the lr of update ``k`` multiplied by ``schedule(k)``. For bf16/fp16 params:
    ``master_weights`` (an fp32 copy in the state), ``stochastic_rounding`` (bf16, keyed on
    ``seed``), ``state_dtype`` (the moments' dtype) and ``grad_attribute`` (e.g. fp32
    ``main_grad`` buffers); see the README, "bf16 and fp16 parameters".
    """

    _kind = "adamw"
    _state_names = ("exp_avg", "exp_avg_sq")

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        schedule=None,
        max_grad_norm: float | None = None,
        clip_value: float | None = None,
        agc_clip_factor: float | None = None,
        agc_eps: float = 1e-3,
        skip_nonfinite: bool = False,
        master_weights: bool | str = False,
        stochastic_rounding: bool = False,
        state_dtype: torch.dtype | str | None = None,
        seed: int = 0,
        grad_attribute: str = "grad",
        norm_group=None,
        backend: str = "auto",
    ):
        defaults = dict(
            lr=lr,
            betas=tuple(betas) if isinstance(betas, list) else betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=bool(amsgrad),
            maximize=bool(maximize),
            agc_clip_factor=agc_clip_factor,
            agc_eps=agc_eps,
            master_weights=_precision.master_option(master_weights),
            stochastic_rounding=bool(stochastic_rounding),
            state_dtype=state_dtype,
            seed=seed,
        )
        super().__init__(
            params,
            defaults,
            schedule=schedule,
            max_grad_norm=max_grad_norm,
            skip_nonfinite=skip_nonfinite,
            backend=backend,
            grad_attribute=grad_attribute,
            clip_value=clip_value,
            norm_group=norm_group,
        )


class Lion(_FusedOptimizer):
    """LION (Chen et al. 2023) as in lion-pytorch, with fused clipping and device schedules.

    ``p *= 1 - lr * wd; p -= lr * sign(b1 * m + (1 - b1) * g); m = b2 * m + (1 - b2) * g``.
    The bf16/fp16 options are AdamW's.
    """

    _kind = "lion"
    _state_names = ("exp_avg",)

    def __init__(
        self,
        params,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        schedule=None,
        max_grad_norm: float | None = None,
        clip_value: float | None = None,
        agc_clip_factor: float | None = None,
        agc_eps: float = 1e-3,
        skip_nonfinite: bool = False,
        master_weights: bool | str = False,
        stochastic_rounding: bool = False,
        state_dtype: torch.dtype | str | None = None,
        seed: int = 0,
        grad_attribute: str = "grad",
        norm_group=None,
        backend: str = "auto",
    ):
        defaults = dict(
            lr=lr,
            betas=tuple(betas) if isinstance(betas, list) else betas,
            weight_decay=weight_decay,
            maximize=bool(maximize),
            agc_clip_factor=agc_clip_factor,
            agc_eps=agc_eps,
            master_weights=_precision.master_option(master_weights),
            stochastic_rounding=bool(stochastic_rounding),
            state_dtype=state_dtype,
            seed=seed,
        )
        super().__init__(
            params,
            defaults,
            schedule=schedule,
            max_grad_norm=max_grad_norm,
            skip_nonfinite=skip_nonfinite,
            backend=backend,
            grad_attribute=grad_attribute,
            clip_value=clip_value,
            norm_group=norm_group,
        )
