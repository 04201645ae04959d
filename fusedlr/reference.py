"""The ``torch`` backend: one optimizer step in plain PyTorch, written to be read.

This is the executable form of the semantics in the README ("Exact semantics"): the default
for CPU tensors and the oracle the Triton kernels are tested against. It follows
``torch.optim.AdamW``'s single-tensor code path op for op (``lerp_``, ``addcmul_``,
``addcdiv_``, float64 host scalars), so that it agrees with torch to the last bits, and it
never rewrites ``.grad``: clipping scales a temporary copy.
"""

from __future__ import annotations

import math

import torch

from . import _precision, _quantized, _split_master

_LOW = _precision.LOW_PRECISION
# The same constant torch.nn.utils.clip_grad_norm_ and the AGC rule add to a norm.
NORM_EPS = 1e-6


def _norm(tensor):
    """clip_grad_norm_'s per-tensor norm; for bf16/fp16 tensors summed in float64 and reported in
    float32 (torch would report it in the tensor's dtype, 8 bits of mantissa for bf16)."""
    if tensor.dtype in _LOW:
        if _norm_slices(tensor) is not None:
            return _sumsq(tensor).sqrt().float()
        return torch.linalg.vector_norm(tensor, dtype=torch.float64).float()
    return torch.linalg.vector_norm(tensor)


def _sumsq(tensor):
    """The float64 sum of squares. torch converts the whole tensor to float64 first (8 bytes per
    element at once): a large one is summed slice by slice."""
    slices = _norm_slices(tensor)
    if slices is None:
        return torch.linalg.vector_norm(tensor, dtype=torch.float64).square()
    flat = tensor.view(-1)
    parts = [torch.linalg.vector_norm(flat[part], dtype=torch.float64).square() for part in slices]
    return torch.stack(parts).sum()


def _norm_slices(tensor):
    if tensor.dtype == torch.float64 or not _sliceable(tensor, tensor.numel()):
        return None
    return _quantized.flat_slices(tensor.numel(), FP32_SLICE)


def _sliceable(tensor, numel) -> bool:
    """A large plain tensor of ``numel`` elements, contiguous: its flat slices line up with
    those of other such tensors (a DTensor or meta tensor is taken whole)."""
    plain = type(tensor) in (torch.Tensor, torch.nn.Parameter) and tensor.device.type != "meta"
    return plain and numel > FP32_SLICE and tensor.numel() == numel and tensor.is_contiguous()


def reduced_norms(grads, params, reduction, found_inf):
    """Per-tensor norms of whole tensors from local shards: float64 sums of squares, completed
    across ranks by ``reduction`` (``_distributed.NormReduction``, one collective), as the
    kernel backends do. Returns ``(grad_norms, param_norms, found_inf)`` (``params`` None: no
    param norms); each norm in the dtype ``_norm`` reports."""
    count = len(grads)
    sumsq = torch.zeros(2 * count + 1, dtype=torch.float64, device=grads[0].device)
    sumsq[:count] = torch.stack([_sumsq(g) for g in grads])
    if params is not None:
        sumsq[count : 2 * count] = torch.stack([_sumsq(p) for p in params])
    found_inf = reduction.reduce_(sumsq, count, found_inf)

    def norms(row, like):
        return [row[i].sqrt().to(torch.float32 if t.dtype in _LOW else t.dtype) for i, t in enumerate(like)]

    grad_norms = norms(sumsq[:count], grads)
    param_norms = None if params is None else norms(sumsq[count : 2 * count], params)
    return grad_norms, param_norms, found_inf


def grad_scales(grads, groups, max_grad_norm, need_norm=False, norms=None):
    """AGC then global-norm clipping, as per-tensor 0-dim scale tensors.

    Returns ``(scales, total_norm)``: ``scales[i]`` multiplies ``grads[i]`` (``None`` when no
    clipping of any kind is on); ``total_norm`` is the global norm ``clip_grad_norm_`` would
    report, that is after AGC and before clipping (``None`` when neither is on). ``norms``:
    per-tensor ``(grad_norms, param_norms)`` already known (a distributed step's), else each
    is computed here as ``clip_grad_norm_`` does.
    """
    any_agc = any(group["agc_clip_factor"] is not None for group, _ in groups)
    if max_grad_norm is None and not any_agc and not need_norm:
        return [None] * len(grads), None

    scales, post_agc_norms = [], []
    for i, (grad, (group, param)) in enumerate(zip(grads, groups)):
        g_norm = _norm(grad) if norms is None else norms[0][i]
        scale = torch.ones_like(g_norm)
        factor = group["agc_clip_factor"]
        if factor is not None:
            # Seed guide, "Adaptive Gradient Clipping": max_norm = max(||p||, eps) * clip_factor.
            p_norm = _norm(param) if norms is None else norms[1][i]
            max_norm = torch.clamp(p_norm, min=group["agc_eps"]) * factor
            scale = torch.where(g_norm > max_norm, max_norm / (g_norm + NORM_EPS), scale)
        scales.append(scale)
        post_agc_norms.append(g_norm * scale)

    if not post_agc_norms:
        return scales, None
    # As clip_grad_norm_: per-tensor norms gathered on the first device, the scale sent back.
    first = post_agc_norms[0].device
    total_norm = torch.linalg.vector_norm(torch.stack([n.to(first) for n in post_agc_norms]))
    if max_grad_norm is not None:
        clip = torch.clamp(max_grad_norm / (total_norm + NORM_EPS), max=1.0)
        scales = [scale * clip.to(scale.device) for scale in scales]
    return scales, total_norm


def _effective_grad(grad, group, scale):
    g = -grad if group["maximize"] else grad
    if scale is not None:
        # clip_grad_norm_ scales grads in place, so in their own dtype: a float64 scale (the norm
        # of a float64 grad) must not promote a 0-dim float32 or bf16 grad.
        g = (g * scale).to(g.dtype)
    return g


def _number(value) -> float:
    """A hyperparameter as a Python float: a tensor lr or beta is read on the host here, as
    torch.optim.AdamW's non-capturable path reads it (the kernel backends read it on the device)."""
    return float(value) if isinstance(value, torch.Tensor) else value


def _step_number(step: torch.Tensor) -> float:
    # Meta tensors hold no values: any number serves, the update only propagates shapes.
    return 1.0 if step.device.type == "meta" else float(step.item())


def adamw_update_(param, grad, state, group, lr: float) -> None:
    """One AdamW update of one tensor: torch.optim.AdamW(foreach=False), decoupled decay."""
    beta1, beta2 = map(_number, group["betas"])
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    state["step"] += 1
    step = _step_number(state["step"])

    param.mul_(1 - lr * group["weight_decay"])
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)

    step_size = lr / (1 - beta1**step)
    bias_correction2_sqrt = math.sqrt(1 - beta2**step)
    if group["amsgrad"]:
        torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
        denom = (state["max_exp_avg_sq"].sqrt() / bias_correction2_sqrt).add_(group["eps"])
    else:
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(group["eps"])
    param.addcdiv_(exp_avg, denom, value=-step_size)


def lion_update_(param, grad, state, group, lr: float) -> None:
    """One LION update of one tensor: lion-pytorch's ``update_fn`` (decay is ``1 - lr * wd``)."""
    beta1, beta2 = map(_number, group["betas"])
    exp_avg = state["exp_avg"]
    param.mul_(1 - lr * group["weight_decay"])
    update = exp_avg.clone().mul_(beta1).add_(grad, alpha=1 - beta1).sign_()
    param.add_(update, alpha=-lr)
    exp_avg.mul_(beta2).add_(grad, alpha=1 - beta2)


def sgd_update_(param, grad, state, group, lr: float) -> None:
    """One SGD update of one tensor: torch.optim.SGD(foreach=False), or with
    ``decoupled_weight_decay`` the decay ``p *= 1 - lr * wd`` in place of ``g += wd * p``.
    The momentum buffer exists before its first update (the kernels address it), and its
    ``step`` says whether it was ever written: a first update copies the grad into it, as
    torch's clone of the grad does."""
    weight_decay = group["weight_decay"]
    if weight_decay != 0:
        if group["decoupled_weight_decay"]:
            param.mul_(1 - lr * weight_decay)
        else:
            grad = grad.add(param, alpha=weight_decay)
    momentum = group["momentum"]
    if momentum != 0:
        buf = state["momentum_buffer"]
        if _step_number(state["step"]) == 0:
            buf.copy_(grad)
        else:
            buf.mul_(momentum).add_(grad, alpha=1 - group["dampening"])
        state["step"] += 1
        grad = grad.add(buf, alpha=momentum) if group["nesterov"] else buf
    param.add_(grad, alpha=-lr)


def schedulefree_update_(param, grad, state, group, lr: float) -> None:
    """One Schedule-Free AdamW update of one tensor, as schedulefree.AdamWScheduleFree: ``param``
    holds y, ``state["z"]`` the base sequence. ``group`` carries this update's ``ckp1`` and
    ``bias_correction2`` (schedulefree_scalars), ``lr`` the warmed-up lr."""
    beta1, beta2 = map(_number, group["betas"])
    z, exp_avg_sq = state["z"], state["exp_avg_sq"]
    ckp1 = group["ckp1"]
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = exp_avg_sq.div(group["bias_correction2"]).sqrt_().add_(group["eps"])
    normalized = grad.div(denom)
    if group["weight_decay"] != 0:
        normalized.add_(param, alpha=group["weight_decay"])  # weight decay at y
    param.lerp_(z, ckp1)
    param.add_(normalized, alpha=lr * (beta1 * (1 - ckp1) - 1))
    z.sub_(normalized, alpha=lr)


def schedulefree_scalars(groups, sums: torch.Tensor, k: int, group_lr):
    """Schedule-free's per-group bookkeeping of update ``k`` (0-based), as the package does it on
    the host: the warmed-up lr, ``lr_max``, the averaging weight and ``weight_sum`` (kept on the
    device in ``sums``, float64 ``[4, G]``: lr_max, weight_sum, then this update's ckp1 and lr;
    updated here) and ``ckp1 = weight / weight_sum``. Every group advances, with or without grads,
    as in the package. Returns ``{id(group): (group with ckp1 and bias_correction2, lr)}``."""
    lr_maxes, weight_sums, ckp1s, lrs = sums.tolist()
    out = {}
    for i, group in enumerate(groups):
        warmup = group["warmup_steps"]
        lr = group_lr(group) * ((k + 1) / warmup if k < warmup else 1.0)
        lr_maxes[i] = lr_max = max(lr, lr_maxes[i])
        weight = ((k + 1) ** group["r"]) * (lr_max ** group["weight_lr_power"])
        weight_sums[i] = weight_sum = weight_sums[i] + weight
        ckp1s[i] = ckp1 = weight / weight_sum if weight_sum != 0 else 0.0
        lrs[i] = lr
        bias_correction2 = 1 - _number(group["betas"][1]) ** (k + 1)
        out[id(group)] = (dict(group, ckp1=ckp1, bias_correction2=bias_correction2), lr)
    sums.copy_(torch.tensor([lr_maxes, weight_sums, ckp1s, lrs], dtype=torch.float64))
    return out


_UPDATES = {"adamw": adamw_update_, "lion": lion_update_, "sgd": sgd_update_, "schedulefree": schedulefree_update_}
_STATE_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "z")


def _in_fp32(param, grad, state) -> bool:
    """Whether this tensor's step runs on float32 copies and rounds once, as the kernels do:
    any low-precision param, grad or state, or an fp32 master copy."""
    tensors = [param, grad] + [state[k] for k in _STATE_KEYS if k in state]
    if _quantized.is_quantized(state):  # 8-bit moments: decoded, updated, encoded again
        return True
    return "master_param" in state or any(t.dtype in _precision.LOW_PRECISION for t in tensors)


# Elements per slice of a large tensor's float32 update (a whole number of 8-bit blocks): the
# working copies and temporaries then take a few MiB, not several times the tensor.
FP32_SLICE = 1 << 20


def update_in_fp32_(kind, param, grad, state, group, lr, *, scale=None, key=None) -> None:
    """One update computed on float32 working copies (from the fp32 master when there is one),
    then each stored value rounded once: states and the param to nearest-even, or the param
    stochastically when ``key`` (the random stream's key) is given. ``grad`` is the raw grad,
    ``scale`` its clip factor. A large contiguous tensor is updated slice by slice (every
    operation is elementwise, the 8-bit blocks whole), so the step's transient memory stays
    small next to its 8-bit or split state."""
    slices = _slices(param, grad, state) if key is None else None
    if slices is None:
        _update_in_fp32_(kind, param, _effective_grad(grad.float(), group, scale), state, group, lr, key)
        return
    step = state.get("step")
    for part in slices:
        sliced = {name: _slice_state(name, value, part) for name, value in state.items()}
        if step is not None:
            sliced["step"] = step.clone()  # advanced once per slice: the last slice's is the tensor's
        g = _effective_grad(grad.view(-1)[part].float(), group, scale)
        _update_in_fp32_(kind, param.view(-1)[part], g, sliced, group, lr)
    if step is not None:
        step.copy_(sliced["step"])


def _slices(param, grad, state):
    """Slices of the flat tensors for a sliced update, or None to update the tensor whole
    (small, or some tensor not contiguous: then their elements would not line up)."""
    numel = param.numel()
    shaped = [param, grad] + [v for k, v in state.items() if k != "step" and k not in _quantized.SCALE_KEYS]
    if not all(isinstance(t, torch.Tensor) and _sliceable(t, numel) for t in shaped):
        return None
    return _quantized.flat_slices(numel, FP32_SLICE)


def _slice_state(name, value, part):
    if name == "step":
        return value
    if name in _quantized.SCALE_KEYS:  # one scale per block; slices hold whole blocks
        return value[_quantized.scales_of(part)]
    return value.view(-1)[part]


def _update_in_fp32_(kind, param, grad, state, group, lr, key=None) -> None:
    master = state.get("master_param")
    residual = state.get(_split_master.RESIDUAL_KEY)
    if residual is not None:  # split master weights: the bf16 param and its residual
        p32 = _split_master.reconstruct(param, residual)
    else:
        p32 = master.clone() if master is not None else param.float()
    work = {k: v.float() for k, v in state.items() if k in _STATE_KEYS}
    decoded = _quantized.decoded_moments(state)
    work.update(decoded)
    if "step" in state:
        work["step"] = state["step"]
    _UPDATES[kind](p32, grad, work, group, lr)
    for k in _STATE_KEYS:
        if k in state:
            state[k].copy_(work[k])
    # AdamW's first moment where the gradient is zero (it only decays) is encoded toward zero
    # (fusedlr/_quantized.py); LION's sign update follows a tiny m as fp32 does: to nearest.
    _quantized.store_moments_(state, {k: work[k] for k in decoded}, grad == 0 if kind == "adamw" else None)
    if master is not None:
        master.copy_(p32)
    if residual is not None:
        _split_master.store_(param, residual, p32)
    elif key is not None:
        param.copy_(_precision.round_stochastically(p32, key))
    else:
        param.copy_(p32)


@torch.no_grad()
def step_(kind: str, items, grads, lr_scale: float, lr_offset: float, max_grad_norm, *, grad_scale=None,
          found_inf=None, skip_nonfinite=False, positions=None, counter=None, clip_value=None,
          reduction=None, report_norm=False, group_scalars=None):  # fmt: skip
    """Apply one step to ``items``: a list of ``(param, group, state)`` for params with grads,
    and their ``grads``.

    The schedule gives each group the lr ``group["lr"] * lr_scale + lr_offset``. ``grad_scale``
    and ``found_inf`` are what torch.amp.GradScaler hands the optimizer: grads are divided by
    the scale (in copies) and a step with ``found_inf`` set is skipped; ``skip_nonfinite``
    skips a step whose global grad norm is not finite. ``positions`` (each param's index among
    all the optimizer's params) and ``counter`` (updates applied so far, a device tensor) key
    the random stream of stochastic rounding. ``clip_value`` clamps every (unscaled) grad element
    to ``[-clip_value, clip_value]`` first, as ``clip_grad_value_`` (low-precision grads in float32).
    ``reduction`` (``_distributed.NormReduction``) completes the norms of local shards across
    ranks, in one collective.
    ``report_norm`` asks for the norm even when no clipping applies to these params (AGC is set in
    a group without grads this step).
    ``group_scalars``: for rules with per-group bookkeeping (schedule-free), called once when the
    update is applied with ``group -> scheduled lr``; returns ``{id(group): (group, lr)}`` to use.

    Returns ``(norm, applied)``: the global grad norm after AGC and before clipping (``None``
    when nothing needed it), and whether the update was applied.
    """
    update = _UPDATES[kind]
    if grad_scale is not None:
        inverse = grad_scale.double().reciprocal().float()  # as GradScaler.unscale_ computes it
        grads = [g * inverse.to(g.device) for g in grads]
    if clip_value is not None:
        grads = [(g.float() if g.dtype in _LOW else g).clamp(-clip_value, clip_value) for g in grads]
    groups = [(group, param) for param, group, _ in items]
    any_agc = any(group["agc_clip_factor"] is not None for group, _ in groups)
    norms = None
    if reduction is not None and (max_grad_norm is not None or any_agc or skip_nonfinite or report_norm):
        params = [param for param, _, _ in items] if any_agc else None
        grad_norms, param_norms, found_inf = reduced_norms(grads, params, reduction, found_inf)
        norms = (grad_norms, param_norms)
    elif reduction is not None and found_inf is not None:  # no norms: agree on found_inf only
        slot = torch.zeros(1, dtype=torch.float64, device=grads[0].device)
        found_inf = reduction.reduce_(slot, 0, found_inf, norms=False)
    scales, total_norm = grad_scales(grads, groups, max_grad_norm, need_norm=skip_nonfinite or report_norm, norms=norms)
    skip = found_inf is not None and bool(found_inf.item())
    if skip_nonfinite and total_norm.device.type != "meta" and not bool(torch.isfinite(total_norm)):
        skip = True
    if skip:
        return total_norm, False
    per_group = None
    if group_scalars is not None:
        per_group = group_scalars(lambda group: _number(group["lr"]) * lr_scale + lr_offset)
    for i, ((param, group, state), grad, scale) in enumerate(zip(items, grads, scales)):
        lr = _number(group["lr"]) * lr_scale + lr_offset
        if per_group is not None:
            group, lr = per_group[id(group)]
        if _in_fp32(param, grad, state):
            key = None
            if _precision.rounds_stochastically(param, group):
                key = _precision.stream_key(group["seed"], positions[i], counter.to(param.device))
            update_in_fp32_(kind, param, grad, state, group, lr, scale=scale, key=key)
        else:
            update(param, _effective_grad(grad, group, scale), state, group, lr)
    return total_norm, True
