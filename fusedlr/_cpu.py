"""The ``cpu`` backend: the torch backend's step on torch's own multi-tensor CPU kernels.

Same semantics, same results (to the last bits but for the fused AdamW kernel's order of
operations) as ``reference.py``, at the speed of torch's fused optimizers: one ``_foreach_norm``
for every per-tensor grad norm, the clip and AGC scales computed as vectors, then each param
group's update by torch's fused kernels (AdamW, SGD) or the reference's operations as foreach
ops (LION, Schedule-Free AdamW): ``_cpu_updates.py``. The clip is applied only when it changes
the grads (an inactive clip costs nothing), to cache-sized copies made chunk by chunk just
before the update reads them: the fused kernels' own ``grad_scale`` input writes the unscaled
grads back into the grads it is given, and ``.grad`` is never rewritten here. ``clip_value``
clamps whole copies of the grads first (foreach ops), as GradScaler's unscale does.

Where a feature cannot be fused, the step falls back to the reference, documented per case:

* the whole step, when the params are not all float32 or all float64 (bf16/fp16 params,
  fp32 master weights, stochastic rounding, bf16 or 8-bit moments, a split master), or not all
  on the CPU: ``reference.step_`` as is;
* the whole step, with a distributed norm (DTensor params or ``norm_group``: ``reduction``);
* one tensor's AdamW or SGD update, when its param, grad and states do not share one dense
  memory layout (the fused kernels walk memory flat): ``reference``'s per-tensor update, after
  the shared vectorized clip. (The foreach ops of LION and Schedule-Free take any layout.)

On the CPU the host reads device values for free, so the skip decisions (GradScaler's
``found_inf``, ``skip_nonfinite``) and whether a clip is active are plain Python ``if``s.
"""

from __future__ import annotations

import bisect

import torch

from . import _cpu_updates, _fused, _quantized, _split_master, reference
from ._cpu_updates import state_names

_FUSED_DTYPES = (torch.float32, torch.float64)
_STATE_TENSORS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "z")


class _GroupBucket:
    """The params of one param group that the multi-tensor kernels update, with their states,
    smallest first (so that the tensors under any size are a prefix: ``below``)."""

    def __init__(self, kind, group, indices, items):
        self.group = group
        self.order = sorted(indices, key=lambda i: items[i][0].numel())  # stable
        self.sizes = [items[i][0].numel() for i in self.order]
        self.params = [items[i][0] for i in self.order]
        self.states = {n: [items[i][2][n] for i in self.order] for n in state_names(kind, group)}
        self.chunks = None  # the foreach rules' cut of the tensors into cache-sized chunks
        self.float_steps = all(step.is_floating_point() for step in self.states.get("step", ()))

    def below(self, numel: int) -> int:
        """How many of the tensors (the first ones) have fewer than ``numel`` elements."""
        return bisect.bisect_left(self.sizes, numel)


class CpuPlan:
    """What a step needs that does not change while the params, groups and states stay the same."""

    def __init__(self, key, kind, items):
        self.key = key
        self.kind = kind
        params = [param for param, _, _ in items]
        self.strides = [param.stride() for param in params]
        self.fast = _fusable_step(kind, items)
        self.buckets: list[tuple[_GroupBucket, list[int]]] = []  # and the indices the reference updates
        self.agc_ranges = []  # (start, stop, factor, eps) of the groups that clip adaptively
        if not self.fast:
            return
        self.flat = kind in _cpu_updates.FLAT_KERNELS
        start = 0
        while start < len(items):
            group = items[start][1]
            stop = start
            while stop < len(items) and items[stop][1] is group:
                stop += 1
            indices = range(start, stop)
            # The foreach ops take any layout; torch's fused kernels walk memory flat.
            fused = [i for i in indices if not self.flat or _same_dense_layout(items[i][0], items[i][2])]
            others = sorted(set(indices) - set(fused))
            self.buckets.append((_GroupBucket(kind, group, fused, items), others))
            if group["agc_clip_factor"] is not None:
                self.agc_ranges.append((start, stop, group["agc_clip_factor"], group["agc_eps"]))
            start = stop
        self.agc_params = [params[i] for start, stop, _, _ in self.agc_ranges for i in range(start, stop)]


_LEAN_STATES = (*_quantized.CODE_KEYS, _split_master.RESIDUAL_KEY)


def _fusable_step(kind, items) -> bool:
    """Whether every tensor of the step can take the multi-tensor path: all params on the CPU,
    of one dtype (float32 or float64), with the states the rule reads, of that dtype, and no
    master copy."""
    dtypes = {param.dtype for param, _, _ in items}
    if len(dtypes) != 1 or next(iter(dtypes)) not in _FUSED_DTYPES:
        return False
    dtype = next(iter(dtypes))
    for param, _, state in items:
        if param.device.type != "cpu" or "master_param" in state:
            return False
        if any(name in state for name in _LEAN_STATES):  # 8-bit moments, a split master: the reference
            return False
        if any(state[n].dtype != dtype for n in _STATE_TENSORS if n in state):
            return False
    return all(name in state for _, group, state in items for name in state_names(kind, group))


def _same_dense_layout(param, state) -> bool:
    """The fused kernel treats every tensor as flat memory: param and states must be dense and
    share their strides (the grads are compared with the params' strides at each step)."""
    if not _is_dense(param):
        return False
    return all(state[n].stride() == param.stride() for n in _STATE_TENSORS if n in state)


def _is_dense(tensor) -> bool:
    return _fused._dense_strides(tensor) is not None


def plan_for(opt, kind, items, key) -> CpuPlan:
    """The cached plan of ``opt`` for ``items`` (rebuilt when ``key`` changes; ``key`` leaves
    out the grads' addresses, so new grad tensors each step reuse it)."""
    plan = opt._plan_cache
    if not isinstance(plan, CpuPlan) or plan.key != key:
        plan = opt._plan_cache = CpuPlan(key, kind, items)
    return plan


# ----- clipping ----------------------------------------------------------------------------------


def _grad_scales(plan, grads, max_grad_norm, need_norm):
    """``reference.grad_scales`` in vectors: per-tensor scales (a 1-D tensor, or a 0-dim one
    shared by every tensor, or None) and the global norm after AGC (None when not needed).

    The same elementwise operations on the same values as the reference's per-tensor 0-dim
    tensors, so the same bits.
    """
    if max_grad_norm is None and not plan.agc_ranges and not need_norm:
        return None, None
    norms = torch.stack(torch._foreach_norm(grads))
    scales = None
    if plan.agc_ranges:
        param_norms = torch.stack(torch._foreach_norm(plan.agc_params))
        scales = torch.ones_like(norms)
        offset = 0
        for start, stop, factor, eps in plan.agc_ranges:
            g_norm = norms[start:stop]
            max_norm = torch.clamp(param_norms[offset : offset + stop - start], min=eps) * factor
            scales[start:stop] = torch.where(g_norm > max_norm, max_norm / (g_norm + reference.NORM_EPS), 1.0)
            offset += stop - start
        norms = norms * scales
    total_norm = torch.linalg.vector_norm(norms)
    if max_grad_norm is not None:
        clip = torch.clamp(max_grad_norm / (total_norm + reference.NORM_EPS), max=1.0)
        scales = clip if scales is None else scales * clip
    return scales, total_norm


def _scaled(grads, scales, owned):
    """The grads with their clip scales, skipping those whose scale is 1: ``(grads, factors)``.

    Grads that are this step's copies already (``owned``: GradScaler's unscaled ones) are scaled
    in place and ``factors`` is None. Otherwise nothing is copied here: ``factors`` is what each
    grad must be multiplied by (a 0-dim tensor shared by all, or a list of floats, one per
    grad), and the updates scale each chunk of the grads into a cache-sized copy just before
    using it (a whole-model copy, in fresh memory every step, made an active clip up to 2x
    slower than ``clip_grad_norm_``'s in-place multiply)."""
    if scales is None:
        return grads, None
    if scales.ndim == 0:
        if scales.item() == 1.0:
            return grads, None
        if owned:
            torch._foreach_mul_(grads, scales)
            return grads, None
        return grads, scales
    values = scales.tolist()
    changed = [i for i, value in enumerate(values) if value != 1.0]
    if not changed:
        return grads, None
    if not owned:
        return grads, values
    torch._foreach_mul_([grads[i] for i in changed], [values[i] for i in changed])
    return grads, None


def _tensor_scale(factors, scales, i):
    """Grad ``i``'s scale as the reference applies it (a 0-dim tensor), or None."""
    if factors is None:
        return None
    if isinstance(factors, torch.Tensor):
        return factors
    return scales[i] if factors[i] != 1.0 else None


@torch.no_grad()
def step_(opt, kind: str, items, grads, lr_scale: float, lr_offset: float, max_grad_norm, *, grad_scale=None,
          found_inf=None, skip_nonfinite=False, positions=None, counter=None, clip_value=None, report_norm=False,
          reduction=None, group_scalars=None):  # fmt: skip
    """``reference.step_`` (same arguments, same result), with ``opt`` holding the cached plan."""
    key = opt._step_cache.key
    count = len(items)
    plan = plan_for(opt, kind, items, key[:count] + key[2 * count :])  # all but the grads' addresses
    # A distributed norm takes the reference's step as it is.
    if not plan.fast or reduction is not None:
        return reference.step_(kind, items, grads, lr_scale, lr_offset, max_grad_norm, grad_scale=grad_scale,
                               found_inf=found_inf, skip_nonfinite=skip_nonfinite, positions=positions,
                               counter=counter, clip_value=clip_value, report_norm=report_norm,
                               reduction=reduction, group_scalars=group_scalars)  # fmt: skip
    owned = False
    if grad_scale is not None:
        inverse = grad_scale.double().reciprocal().float()  # as GradScaler.unscale_ and the reference
        grads = torch._foreach_mul(grads, inverse)
        owned = True
    if clip_value is not None:  # clip_grad_value_, after unscaling as the reference: on copies
        if not owned:
            grads = torch._foreach_clamp_min(grads, -clip_value)
            owned = True
        else:
            torch._foreach_clamp_min_(grads, -clip_value)
        torch._foreach_clamp_max_(grads, clip_value)
    scales, total_norm = _grad_scales(plan, grads, max_grad_norm, skip_nonfinite or report_norm)
    if found_inf is not None and bool(found_inf.item()):
        return total_norm, False
    if skip_nonfinite and not bool(torch.isfinite(total_norm)):
        return total_norm, False
    grads, factors = _scaled(grads, scales, owned)
    # The fused kernels walk memory flat: a grad laid out unlike its param takes the reference update.
    layouts_match = not plan.flat or list(map(torch.Tensor.stride, grads)) == plan.strides
    update = _cpu_updates.UPDATES[kind]
    per_group = None
    if group_scalars is not None:  # schedule-free: this update's group values, once
        per_group = group_scalars(lambda group: reference._number(group["lr"]) * lr_scale + lr_offset)
    for bucket, others in plan.buckets:
        group = bucket.group
        lr = reference._number(group["lr"]) * lr_scale + lr_offset  # in float64, as the reference
        if per_group is not None:
            group, lr = per_group[id(group)]
        if not layouts_match:  # this step only: some grads have another layout than their params
            fused = [i for i in bucket.order if grads[i].stride() == plan.strides[i]]
            others = others + sorted(set(bucket.order) - set(fused))
            bucket = _GroupBucket(kind, bucket.group, fused, items)
        if bucket.order:
            bucket_factors = factors if not isinstance(factors, list) else [factors[i] for i in bucket.order]
            update(bucket, [grads[i] for i in bucket.order], group, lr, bucket_factors)
        for i in others:
            param, _, state = items[i]
            grad = reference._effective_grad(grads[i], group, _tensor_scale(factors, scales, i))
            reference._UPDATES[kind](param, grad, state, group, lr)
    return total_norm, True
