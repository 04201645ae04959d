"""Independent references the suite holds fusedlr to.

Nothing here imports fusedlr's maths: the oracles are torch.optim.AdamW(foreach=False),
clip_grad_norm_, LambdaLR driven by Hugging Face's schedule formulas (written out below),
lion-pytorch's Lion, and the seed guide's AGC function.
"""

from __future__ import annotations

import math

import torch

# ----- Hugging Face's schedule lambdas (transformers.optimization), written out ---------------


def hf_constant_with_warmup(warmup):
    def f(step):
        if step < warmup:
            return float(step) / float(max(1.0, warmup))
        return 1.0

    return f


def hf_linear(warmup, total):
    def f(step):
        if step < warmup:
            return float(step) / float(max(1, warmup))
        return max(0.0, float(total - step) / float(max(1, total - warmup)))

    return f


def hf_cosine(warmup, total, num_cycles=0.5):
    def f(step):
        if step < warmup:
            return float(step) / float(max(1, warmup))
        progress = float(step - warmup) / float(max(1, total - warmup))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress)))

    return f


def hf_cosine_with_min_lr(warmup, total, num_cycles=0.5, min_lr_rate=0.0):
    def f(step):
        if step < warmup:
            return float(step) / float(max(1, warmup))
        progress = float(step - warmup) / float(max(1, total - warmup))
        factor = 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress))
        factor = factor * (1 - min_lr_rate) + min_lr_rate
        return max(0, factor)

    return f


def hf_inverse_sqrt(warmup, timescale=None):
    if timescale is None:
        timescale = warmup or 10_000

    def f(step):
        if step < warmup:
            return float(step) / float(max(1, warmup))
        shift = timescale - warmup
        return 1.0 / math.sqrt((step + shift) / timescale)

    return f


# ----- the seed guide's adaptive gradient clipping (002, "Adaptive Gradient Clipping") --------


def adaptive_clip_grad(parameters, clip_factor=0.01, eps=1e-3):
    for p in parameters:
        if p.grad is None:
            continue
        p_norm = p.data.norm()
        g_norm = p.grad.data.norm()
        max_norm = torch.clamp(p_norm, min=eps) * clip_factor
        if g_norm > max_norm:
            p.grad.data.mul_(max_norm / (g_norm + 1e-6))


# ----- a training loop as a careful user writes it by hand ------------------------------------


def run_by_hand(make_optimizer, params, groups, grads_per_step, *, lr_lambda=None, max_grad_norm=None):
    """Steps ``make_optimizer(param_groups)`` the way users do: AGC, clip, step, schedule.

    ``groups``: list of dicts with ``params`` (indices into ``params``) and hyperparameters,
    plus an optional ``agc_clip_factor``/``agc_eps`` that the hand-written loop applies itself.
    """
    torch_groups = []
    for g in groups:
        g = dict(g)
        g.pop("agc_clip_factor", None)
        g.pop("agc_eps", None)
        g["params"] = [params[i] for i in g["params"]]
        torch_groups.append(g)
    opt = make_optimizer(torch_groups)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda) if lr_lambda is not None else None
    norms = []
    for grads in grads_per_step:
        for p, g in zip(params, grads):
            p.grad = None if g is None else g.clone()
        for g in groups:
            if g.get("agc_clip_factor") is not None:
                adaptive_clip_grad([params[i] for i in g["params"]], g["agc_clip_factor"], g.get("agc_eps", 1e-3))
        if max_grad_norm is not None:
            norms.append(torch.nn.utils.clip_grad_norm_(params, max_grad_norm, foreach=False))
        opt.step()
        if sched is not None:
            sched.step()
    return opt, norms
