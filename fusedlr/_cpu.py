"""The ``cpu`` backend: the torch backend's step on torch's own multi-tensor CPU kernels.

Same semantics, same results (to the last bits but for the fused AdamW kernel's order of
operations) as ``reference.py``, at the speed of ``torch.optim.AdamW(fused=True)``: one
``_foreach_norm`` for every per-tensor grad norm, the clip and AGC scales computed as vectors,
``torch._fused_adamw_`` for AdamW (one call per param group) and ``torch._foreach_*`` ops for
LION (the reference's op sequence, per group). The clip is applied only when it changes the
grads (an inactive clip costs nothing), to copies: ``torch._fused_adamw_``'s own ``grad_scale``
input writes the unscaled grads back into the grads it is given, and ``.grad`` is never
rewritten here.

Where a feature cannot be fused, the step falls back to the reference, documented per case:

* the whole step, when the params are not all float32 or all float64 (bf16/fp16 params,
  fp32 master weights, stochastic rounding, bf16 or 8-bit moments, a split master), or not all
  on the CPU: ``reference.step_`` as is;
* the whole step, with ``clip_value``, a distributed norm (DTensor params or ``norm_group``:
  ``reduction``), or AGC set only in groups without grads this step;
* one tensor's AdamW update, when its param, grad and states do not share one dense memory
  layout (the fused kernel walks memory flat): ``reference``'s per-tensor update, after the
  shared vectorized clip. (LION's foreach ops take any layout.)

On the CPU the host reads device values for free, so the skip decisions (GradScaler's
``found_inf``, ``skip_nonfinite``) and whether a clip is active are plain Python ``if``s.
"""

from __future__ import annotations

import contextlib
import functools

import torch

from . import _fused, _quantized, _split_master, reference

_FUSED_DTYPES = (torch.float32, torch.float64)
_MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


# torch's fused AdamW CPU kernel opens a parallel region for every tensor, however small: for
# tensors below this size one thread is faster (the fork and join cost more than the work, and
# far more when another process holds a core).
SERIAL_NUMEL = 1 << 16
# LION runs seven elementwise passes: over blocks of this many elements (p, m, g and the update:
# 4 MiB in float32, well within a server CPU's last-level cache) rather than over the whole
# model. Measured on a 2-core EPYC (32 MiB L3), one thread: 1.4-3.2x faster than whole-model
# passes on the 3.7M and 4.2M cases; 2**18 and 2**20 within noise of each other.
LION_BLOCK_NUMEL = 1 << 18


class _GroupBucket:
    """The params of one param group that the multi-tensor kernels update, with their states,
    small tensors first (``serial`` of them, updated on one thread)."""

    def __init__(self, kind, group, indices, items):
        self.group = group
        self.order = sorted(indices, key=lambda i: items[i][0].numel() >= SERIAL_NUMEL)  # stable: small first
        self.serial = sum(items[i][0].numel() < SERIAL_NUMEL for i in indices)
        self.params = [items[i][0] for i in self.order]
        names = ["step", "exp_avg", "exp_avg_sq"] if kind == "adamw" else ["exp_avg"]
        if kind == "adamw" and group["amsgrad"]:
            names.append("max_exp_avg_sq")
        self.states = {n: [items[i][2][n] for i in self.order] for n in names}


class CpuPlan:
    """What a step needs that does not change while the params, groups and states stay the same."""

    def __init__(self, key, kind, items):
        self.key = key
        self.kind = kind
        params = [param for param, _, _ in items]
        self.strides = [param.stride() for param in params]
        self.fast = _fusable_step(items)
        self.buckets: list[tuple[_GroupBucket, list[int]]] = []  # and the indices the reference updates
        self.agc_ranges = []  # (start, stop, factor, eps) of the groups that clip adaptively
        if not self.fast:
            return
        start = 0
        while start < len(items):
            group = items[start][1]
            stop = start
            while stop < len(items) and items[stop][1] is group:
                stop += 1
            indices = range(start, stop)
            # LION's foreach ops take any layout; torch's fused AdamW kernel walks memory flat.
            fused = [i for i in indices if kind == "lion" or _same_dense_layout(items[i][0], items[i][2])]
            others = sorted(set(indices) - set(fused))
            self.buckets.append((_GroupBucket(kind, group, fused, items), others))
            if group["agc_clip_factor"] is not None:
                self.agc_ranges.append((start, stop, group["agc_clip_factor"], group["agc_eps"]))
            start = stop
        self.agc_params = [params[i] for start, stop, _, _ in self.agc_ranges for i in range(start, stop)]


_LEAN_STATES = (*_quantized.CODE_KEYS, _split_master.RESIDUAL_KEY)


def _fusable_step(items) -> bool:
    """Whether every tensor of the step can take the multi-tensor path: all params on the CPU,
    of one dtype (float32 or float64), with states of that dtype and no master copy."""
    dtypes = {param.dtype for param, _, _ in items}
    if len(dtypes) != 1 or next(iter(dtypes)) not in _FUSED_DTYPES:
        return False
    dtype = next(iter(dtypes))
    for param, _, state in items:
        if param.device.type != "cpu" or "master_param" in state:
            return False
        if any(name in state for name in _LEAN_STATES):  # 8-bit moments, a split master: the reference
            return False
        if any(state[n].dtype != dtype for n in _MOMENTS if n in state):
            return False
    return True


def _same_dense_layout(param, state) -> bool:
    """The fused kernel treats every tensor as flat memory: param and states must be dense and
    share their strides (the grads are compared with the params' strides at each step)."""
    if not _is_dense(param):
        return False
    return all(state[n].stride() == param.stride() for n in _MOMENTS if n in state)


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
    """The grads each multiplied by its scale, skipping those whose scale is 1: copies unless
    ``owned`` (the grads are already this step's copies)."""
    if scales is None:
        return grads
    if scales.ndim == 0:
        if scales.item() == 1.0:
            return grads
        if owned:
            torch._foreach_mul_(grads, scales)
            return grads
        return torch._foreach_mul(grads, scales)
    values = scales.tolist()
    changed = [i for i, value in enumerate(values) if value != 1.0]
    if not changed:
        return grads
    grads = list(grads)
    picked = [grads[i] for i in changed]
    factors = [values[i] for i in changed]
    if owned:
        torch._foreach_mul_(picked, factors)
    else:
        picked = torch._foreach_mul(picked, factors)
    for i, grad in zip(changed, picked):
        grads[i] = grad
    return grads


# ----- updates ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _one_thread():
    """torch's intra-op parallelism off for the small tensors' calls, then back as it was."""
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads > 1:
            torch.set_num_threads(threads)


def _in_two_parts(bucket, kernel, lists) -> None:
    """``kernel(*lists)``, the small tensors (the first ``bucket.serial``) on one thread."""
    serial = bucket.serial
    if serial:
        with _one_thread():
            kernel(*[values[:serial] for values in lists])
    if serial < len(bucket.params):
        kernel(*[values[serial:] for values in lists])


def _adamw_(bucket, grads, lr):
    group = bucket.group
    # Tensor betas are read on the host, as the reference does (the fused kernel takes floats).
    beta1, beta2 = map(reference._number, group["betas"])
    states = bucket.states
    torch._foreach_add_(states["step"], 1)
    kernel = functools.partial(
        torch._fused_adamw_, lr=lr, beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
        amsgrad=bool(group["amsgrad"]), maximize=bool(group["maximize"]),
    )  # fmt: skip
    lists = [bucket.params, grads, states["exp_avg"], states["exp_avg_sq"], states.get("max_exp_avg_sq", [])]
    _in_two_parts(bucket, kernel, lists + [states["step"]])


def _lion_(bucket, grads, lr):
    """``reference.lion_update_``'s operations (so the same bits): over all the small tensors of
    the group at once, then tensor by tensor, and block by block within a large contiguous
    tensor, so that the seven passes over a block find it in the cache."""
    group = bucket.group
    params, exp_avgs = bucket.params, bucket.states["exp_avg"]
    dtype = params[0].dtype
    lr = reference._number(lr)  # tensor lr and betas read on the host, as the reference does
    beta1, beta2 = map(reference._number, group["betas"])
    sign = -1.0 if group["maximize"] else 1.0  # a + alpha * (-g) is a + (-alpha) * g, to the bit

    def factor(value):
        # A 0-dim tensor of the params' dtype: the same product as a Python scalar (rounded to
        # that dtype either way), without wrapping the scalar into a tensor for every tensor.
        return torch.tensor(value, dtype=dtype)

    decay = factor(1 - lr * group["weight_decay"]) if group["weight_decay"] != 0 else None
    beta1, beta2, alpha1, alpha2 = factor(beta1), factor(beta2), sign * (1 - beta1), sign * (1 - beta2)

    def lion_ops(params, exp_avgs, grads):
        if decay is not None:  # a multiplication by exactly 1 changes nothing: skipped
            torch._foreach_mul_(params, decay)
        update = torch._foreach_mul(exp_avgs, beta1)
        torch._foreach_add_(update, grads, alpha=alpha1)
        torch._foreach_sign_(update)
        torch._foreach_add_(params, update, alpha=-lr)
        torch._foreach_mul_(exp_avgs, beta2)
        torch._foreach_add_(exp_avgs, grads, alpha=alpha2)

    serial = bucket.serial
    if serial:  # (on all threads: one thread here measured slower, unlike AdamW's kernel)
        lion_ops(params[:serial], exp_avgs[:serial], grads[:serial])
    for param, exp_avg, grad in zip(params[serial:], exp_avgs[serial:], grads[serial:]):
        size = param.numel()
        if size <= LION_BLOCK_NUMEL or not (param.is_contiguous() and exp_avg.is_contiguous() and grad.is_contiguous()):
            lion_ops([param], [exp_avg], [grad])
            continue
        flat = param.view(-1), exp_avg.view(-1), grad.view(-1)
        for start in range(0, size, LION_BLOCK_NUMEL):
            lion_ops(*[[t[start : start + LION_BLOCK_NUMEL]] for t in flat])


_UPDATES = {"adamw": _adamw_, "lion": _lion_}


@torch.no_grad()
def step_(opt, kind: str, items, grads, lr_scale: float, lr_offset: float, max_grad_norm, *, grad_scale=None,
          found_inf=None, skip_nonfinite=False, positions=None, counter=None, clip_value=None, report_norm=False,
          reduction=None):  # fmt: skip
    """``reference.step_`` (same arguments, same result), with ``opt`` holding the cached plan."""
    key = opt._step_cache.key
    count = len(items)
    plan = plan_for(opt, kind, items, key[:count] + key[2 * count :])  # all but the grads' addresses
    # Value clipping, a distributed norm and a norm reported for AGC groups without grads take the
    # reference's step as it is.
    if not plan.fast or clip_value is not None or reduction is not None or report_norm:
        return reference.step_(kind, items, grads, lr_scale, lr_offset, max_grad_norm, grad_scale=grad_scale,
                               found_inf=found_inf, skip_nonfinite=skip_nonfinite, positions=positions,
                               counter=counter, clip_value=clip_value, report_norm=report_norm,
                               reduction=reduction)  # fmt: skip
    owned = False
    if grad_scale is not None:
        inverse = grad_scale.double().reciprocal().float()  # as GradScaler.unscale_ and the reference
        grads = torch._foreach_mul(grads, inverse)
        owned = True
    scales, total_norm = _grad_scales(plan, grads, max_grad_norm, skip_nonfinite)
    if found_inf is not None and bool(found_inf.item()):
        return total_norm, False
    if skip_nonfinite and not bool(torch.isfinite(total_norm)):
        return total_norm, False
    grads = _scaled(grads, scales, owned)
    # The fused AdamW kernel walks memory flat: a grad laid out unlike its param takes the reference update.
    layouts_match = kind == "lion" or list(map(torch.Tensor.stride, grads)) == plan.strides
    update = _UPDATES[kind]
    for bucket, others in plan.buckets:
        group = bucket.group
        lr = group["lr"] * lr_scale + lr_offset
        if not layouts_match:  # this step only: some grads have another layout than their params
            fused = [i for i in bucket.order if grads[i].stride() == plan.strides[i]]
            others = others + sorted(set(bucket.order) - set(fused))
            bucket = _GroupBucket(kind, group, fused, items)
        if bucket.order:
            update(bucket, [grads[i] for i in bucket.order], lr)
        for i in others:
            param, _, state = items[i]
            reference._UPDATES[kind](param, reference._effective_grad(grads[i], group, None), state, group, lr)
    return total_norm, True
