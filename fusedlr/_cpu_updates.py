"""The ``cpu`` backend's updates: each rule of ``reference.py`` on torch's multi-tensor CPU kernels.

One function per rule, each taking a ``_cpu._GroupBucket`` (the params of one param group,
smallest first, with their states), the grads, the group (schedule-free: this update's copy of
it), its lr and the grads' clip factors (None when the clip changes nothing; else the grads are
scaled chunk by chunk into cache-sized copies just before they are read, see ``_chunks``):

* AdamW: ``torch._fused_adamw_`` (one pass; its order of operations, not the reference's);
* SGD: ``torch._fused_sgd_`` (one pass; the reference's bits but in its vector loop's tail),
  the decoupled decay as a multiplication first, as the reference does it;
* LION: the reference's own operations as ``torch._foreach_*`` calls (the same bits), and
  Schedule-Free AdamW in nine such passes (fp32 rounding), chunk by chunk (small tensors
  together, large ones in blocks) so that every pass over a chunk finds it in the cache.

torch's fused CPU kernels open a parallel region per tensor, however small: the small tensors'
call runs on one thread (``SERIAL_NUMEL``, ``SGD_SERIAL_NUMEL``).
"""

from __future__ import annotations

import contextlib
import functools
import math

import torch

from . import reference

# torch's fused CPU kernels (AdamW, SGD) open a parallel region for every tensor, however small:
# for tensors below this size one thread is faster (the fork and join cost more than the work,
# and far more when another process holds a core).
SERIAL_NUMEL = 1 << 16
# SGD's lighter kernel gains from one thread only on tiny tensors. Measured with the three
# settings side by side in one interleaved run (2-core EPYC): the 1.0M-element GPT-2 layout
# 1.13-1.17x torch fused SGD + clip whatever the threshold; the 200 tensors of 1,024 elements
# 1.47x with 2**12 or 2**16, 1.24x with no tensor on one thread.
SGD_SERIAL_NUMEL = 1 << 12
# The foreach rules (LION: seven elementwise passes, Schedule-Free: nine) run chunk by chunk of at
# most this many elements (small tensors together, large ones in blocks; for Schedule-Free six
# such lists, 6 MiB in float32, well within a server CPU's last-level cache) rather than over the
# whole model. Measured on a 2-core EPYC (32 MiB L3): Schedule-Free on the 1.0M-element GPT-2
# layout 2.5x faster than whole-model passes (2**17 and 2**18 best; 2**14: 2x more time, 2**20
# no gain); LION, one thread, 1.4-3.2x on the 3.7M and 4.2M cases.
BLOCK_NUMEL = 1 << 17

# Per rule, the state tensors the multi-tensor kernels read (SGD's only with momentum).
STATE_NAMES = {
    "adamw": ("step", "exp_avg", "exp_avg_sq"),
    "lion": ("exp_avg",),
    "sgd": ("momentum_buffer", "step"),
    "schedulefree": ("z", "exp_avg_sq"),
}
# The rules whose kernel walks memory flat: param, grad and states must share one dense layout.
FLAT_KERNELS = ("adamw", "sgd")


def state_names(kind: str, group: dict) -> list[str]:
    names = list(STATE_NAMES[kind])
    if kind == "adamw" and group["amsgrad"]:
        names.append("max_exp_avg_sq")
    if kind == "sgd" and group["momentum"] == 0:
        return []
    return names


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


def _in_two_parts(serial, kernel, lists) -> None:
    """``kernel(*lists)``, the first ``serial`` tensors of each list on one thread."""
    if serial:
        with _one_thread():
            kernel(*[values[:serial] for values in lists])
    if serial < len(lists[0]):
        kernel(*[values[serial:] for values in lists])


def _chunk_spec(rows) -> list[list[tuple]]:
    """Consecutive tensors (``rows``: each tensor's param, states and grad) cut into chunks of
    at most ``BLOCK_NUMEL`` elements: small tensors together, a large contiguous one in blocks
    (``(index, start, stop)``; ``(index, None, None)`` is a whole tensor)."""
    chunks, current, size = [], [], 0
    for i, row in enumerate(rows):
        numel = row[0].numel()
        if numel > BLOCK_NUMEL and all(t.is_contiguous() for t in row):
            spans = [(start, min(start + BLOCK_NUMEL, numel)) for start in range(0, numel, BLOCK_NUMEL)]
        else:
            spans = [(None, None)]
        for start, stop in spans:
            count = numel if start is None else stop - start
            if current and size + count > BLOCK_NUMEL:
                chunks.append(current)
                current, size = [], 0
            current.append((i, start, stop))
            size += count
    if current:
        chunks.append(current)
    return chunks


def _cut(spec, tensors) -> list[list[torch.Tensor]]:
    return [[tensors[i] if start is None else tensors[i].view(-1)[start:stop] for i, start, stop in chunk]
            for chunk in spec]  # fmt: skip


def _chunks(bucket, columns, grads, factors):
    """The bucket's tensors chunk by chunk (``_chunk_spec``): per chunk, the index of each
    piece's tensor, the pieces of each of ``columns`` (params and states), and the grads' pieces,
    multiplied by their clip ``factors`` when there are any: a copy of one chunk, made just
    before the update reads it (see ``_cpu._scaled``). The cut and the columns' views are kept
    in the bucket while the grads keep their layouts; the grads are cut afresh each step (views
    kept between steps would keep last step's grads alive)."""
    key = [g.is_contiguous() for g in grads]
    if bucket.chunks is None or bucket.chunks[0] != key:
        spec = _chunk_spec(list(zip(*columns, grads)))
        bucket.chunks = (key, spec, list(zip(*[_cut(spec, column) for column in columns])))
    _, spec, cut = bucket.chunks
    for chunk, lists, grad_list in zip(spec, cut, _cut(spec, grads)):
        indices = [i for i, _, _ in chunk]
        if isinstance(factors, torch.Tensor):  # one clip scale for all
            grad_list = torch._foreach_mul(grad_list, factors)
        elif factors is not None:  # AGC: one per tensor
            grad_list = torch._foreach_mul(grad_list, [factors[i] for i in indices])
        yield indices, lists, grad_list


def _blockwise(ops, bucket, tensors, factors) -> None:
    """``ops(*lists)`` chunk by chunk, so that the passes over a chunk find it in the cache.
    ``tensors``: equally long lists (params, states, then the grads) in the same order.
    Elementwise ops give the same bits whatever the cut."""
    *columns, grads = tensors
    for _, lists, grad_list in _chunks(bucket, columns, grads, factors):
        ops(*lists, grad_list)


def _factor(value, dtype):
    # A 0-dim tensor of the params' dtype: the same product or sum as a Python scalar (rounded to
    # that dtype either way), without wrapping the scalar into a tensor for every tensor (torch's
    # foreach ops on the CPU take 4x longer per tensor with a Python scalar).
    return torch.tensor(value, dtype=dtype)


_ONE = torch.tensor(1.0)


def _count_(bucket) -> None:
    """Every ``step`` tensor of the bucket plus one (a 0-dim tensor operand, and ``alpha`` given:
    torch's CPU fast path, 4x faster than the scalar ``1`` or the tensor without ``alpha``).
    Integer steps (accepted by the checks, as torch accepts them) take the scalar: a float
    operand cannot be added into them."""
    steps = bucket.states["step"]
    if bucket.float_steps:
        torch._foreach_add_(steps, _ONE, alpha=1.0)
    else:
        torch._foreach_add_(steps, 1)


def adamw_(bucket, grads, group, lr, factors=None) -> None:
    # Tensor betas are read on the host, as the reference does (the fused kernel takes floats).
    beta1, beta2 = map(reference._number, group["betas"])
    states = bucket.states
    _count_(bucket)
    kernel = functools.partial(
        torch._fused_adamw_, lr=lr, beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
        amsgrad=bool(group["amsgrad"]), maximize=bool(group["maximize"]),
    )  # fmt: skip
    moments = [states["exp_avg"], states["exp_avg_sq"]] + ([states["max_exp_avg_sq"]] if group["amsgrad"] else [])
    if factors is None:  # one call (two: the small tensors on one thread)
        lists = [bucket.params, grads, moments[0], moments[1], moments[2] if group["amsgrad"] else []]
        _in_two_parts(bucket.below(SERIAL_NUMEL), kernel, lists + [states["step"]])
        return
    for indices, (params, *chunk_moments), grad_list in _chunks(bucket, [bucket.params, *moments], grads, factors):
        maxima = chunk_moments[2] if group["amsgrad"] else []
        steps = [states["step"][i] for i in indices]  # a tensor's pieces share its step, read only
        lists = [params, grad_list, chunk_moments[0], chunk_moments[1], maxima, steps]
        _in_two_parts(sum(bucket.sizes[i] < SERIAL_NUMEL for i in indices), kernel, lists)


def sgd_(bucket, grads, group, lr, factors=None) -> None:
    """``reference.sgd_update_`` by torch's fused SGD kernel (the same bits but for the tail
    elements of its vector loop): a momentum buffer whose ``step`` is 0 takes the grad as it is
    (the kernel's ``is_first_step``). Only tensors under ``SGD_SERIAL_NUMEL`` elements run on one
    thread (see there)."""
    params = bucket.params
    lr = reference._number(lr)
    weight_decay = group["weight_decay"]
    if weight_decay != 0 and group["decoupled_weight_decay"]:
        torch._foreach_mul_(params, _factor(1 - lr * weight_decay, params[0].dtype))
        weight_decay = 0.0
    kernel = functools.partial(
        torch._fused_sgd_, weight_decay=weight_decay, momentum=group["momentum"], lr=lr,
        dampening=group["dampening"], nesterov=bool(group["nesterov"]), maximize=bool(group["maximize"]),
    )  # fmt: skip
    momentum = group["momentum"] != 0
    buffers = bucket.states["momentum_buffer"] if momentum else []
    first = [step.item() == 0 for step in bucket.states["step"]] if momentum else []  # free on the CPU
    if factors is None and not any(first):  # the common step: one call (two with tiny tensors)
        _in_two_parts(bucket.below(SGD_SERIAL_NUMEL), functools.partial(kernel, is_first_step=False),
                      [params, grads, buffers])  # fmt: skip
    else:
        parts = [(range(len(params)), [params, buffers], grads)]
        if factors is not None:
            parts = _chunks(bucket, [params, buffers] if momentum else [params], grads, factors)
        firsts = first or [False] * len(params)  # no momentum: no buffer to copy into
        for indices, (chunk_params, *chunk_buffers), grad_list in parts:
            for is_first in (False, True):
                picked = [k for k, i in enumerate(indices) if firsts[i] == is_first]
                if picked:
                    lists = [[values[k] for k in picked] for values in (chunk_params, grad_list)]
                    lists.append([chunk_buffers[0][k] for k in picked] if momentum else [])
                    serial = sum(bucket.sizes[indices[k]] < SGD_SERIAL_NUMEL for k in picked)
                    _in_two_parts(serial, functools.partial(kernel, is_first_step=is_first), lists)
    if momentum:
        _count_(bucket)


def lion_(bucket, grads, group, lr, factors=None) -> None:
    """``reference.lion_update_``'s operations (so the same bits)."""
    params, exp_avgs = bucket.params, bucket.states["exp_avg"]
    dtype = params[0].dtype
    lr = reference._number(lr)  # tensor lr and betas read on the host, as the reference does
    beta1, beta2 = map(reference._number, group["betas"])
    sign = -1.0 if group["maximize"] else 1.0  # a + alpha * (-g) is a + (-alpha) * g, to the bit
    decay = _factor(1 - lr * group["weight_decay"], dtype) if group["weight_decay"] != 0 else None
    beta1, beta2, alpha1, alpha2 = _factor(beta1, dtype), _factor(beta2, dtype), sign * (1 - beta1), sign * (1 - beta2)

    def ops(params, exp_avgs, grads):
        if decay is not None:  # a multiplication by exactly 1 changes nothing: skipped
            torch._foreach_mul_(params, decay)
        update = torch._foreach_mul(exp_avgs, beta1)
        torch._foreach_add_(update, grads, alpha=alpha1)
        torch._foreach_sign_(update)
        torch._foreach_add_(params, update, alpha=-lr)
        torch._foreach_mul_(exp_avgs, beta2)
        torch._foreach_add_(exp_avgs, grads, alpha=alpha2)

    _blockwise(ops, bucket, [params, exp_avgs, grads], factors)


def schedulefree_(bucket, grads, group, lr, factors=None) -> None:
    """``reference.schedulefree_update_`` in nine foreach passes instead of ten (to rounding: the
    bias correction is moved out of the denominator). ``group`` is this update's copy of the
    group from ``reference.schedulefree_scalars`` (with ``ckp1`` and ``bias_correction2``) and
    ``lr`` the warmed-up lr.

    The reference's ``g / (sqrt(v / bc2) + eps)`` is ``root * g / (sqrt(v) + eps * root)`` with
    ``root = sqrt(bc2)``: the factor ``root`` goes into the weight decay's and the two updates'
    scalars, which saves the pass that divides ``v`` by ``bc2``.
    """
    params, z, exp_avg_sq = bucket.params, bucket.states["z"], bucket.states["exp_avg_sq"]
    lr = reference._number(lr)
    beta1, beta2 = map(reference._number, group["betas"])
    ckp1, weight_decay = group["ckp1"], group["weight_decay"]
    root = math.sqrt(group["bias_correction2"])
    if group["maximize"]:
        grads = torch._foreach_neg(grads)
    beta2_factor, eps = _factor(beta2, params[0].dtype), _factor(group["eps"] * root, params[0].dtype)

    def ops(params, z, exp_avg_sq, grads):
        torch._foreach_mul_(exp_avg_sq, beta2_factor)
        torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1 - beta2)
        denom = torch._foreach_sqrt(exp_avg_sq)
        torch._foreach_add_(denom, eps, alpha=1.0)  # (alpha: see _count_)
        normalized = torch._foreach_div(grads, denom)  # the reference's normalized grad / root
        if weight_decay != 0:
            torch._foreach_add_(normalized, params, alpha=weight_decay / root)  # weight decay at y
        torch._foreach_lerp_(params, z, ckp1)
        torch._foreach_add_(params, normalized, alpha=lr * (beta1 * (1 - ckp1) - 1) * root)
        torch._foreach_sub_(z, normalized, alpha=lr * root)

    _blockwise(ops, bucket, [params, z, exp_avg_sq, grads], factors)


UPDATES = {"adamw": adamw_, "lion": lion_, "sgd": sgd_, "schedulefree": schedulefree_}
