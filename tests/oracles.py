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


def hf_cosine_with_min_lr_rate(warmup, total, num_cycles=0.5, min_lr_rate=0.0, warmup_lr_rate=None):
    """HF get_cosine_with_min_lr_schedule_with_warmup_lr_rate, transcribed."""

    def f(step):
        step, w, t = float(step), float(warmup), float(total)
        if step < w:
            if warmup_lr_rate is None:
                return (step + 1.0) / max(1.0, w)
            return warmup_lr_rate + (1.0 - warmup_lr_rate) * step / max(1, w - 1)
        progress = (step - w + 1.0) / max(1.0, t - w)
        factor = 0.5 * (1.0 + math.cos(math.pi * num_cycles * 2.0 * progress))
        return max(0, factor * (1 - min_lr_rate) + min_lr_rate)

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


def hf_cosine_hard_restarts(warmup, total, num_cycles=1):
    def f(step):
        if step < warmup:
            return float(step) / float(max(1, warmup))
        progress = float(step - warmup) / float(max(1, total - warmup))
        if progress >= 1.0:
            return 0.0
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((float(num_cycles) * progress) % 1.0))))

    return f


def hf_polynomial(warmup, total, lr_init, lr_end=1e-7, power=1.0):
    def f(step):
        if step < warmup:
            return float(step) / float(max(1, warmup))
        elif step > total:
            return lr_end / lr_init
        lr_range = lr_init - lr_end
        decay_steps = total - warmup
        pct_remaining = 1 - (step - warmup) / decay_steps
        decay = lr_range * pct_remaining**power + lr_end
        return decay / lr_init

    return f


def hf_wsd(warmup, stable, decay_steps, warmup_type="linear", decay_type="cosine", min_lr_ratio=0.0, num_cycles=0.5):
    def f(step):
        if step < warmup:
            progress = float(step) / float(max(1, warmup))
            factor = {
                "linear": progress,
                "cosine": 0.5 * (1.0 - math.cos(math.pi * progress)),
                "1-sqrt": 1.0 - math.sqrt(1.0 - progress),
            }[warmup_type]
            return max(0.0, factor * (1.0 - min_lr_ratio) + min_lr_ratio)
        if step < warmup + stable:
            return 1.0
        if step < warmup + stable + decay_steps:
            progress = float(step - warmup - stable) / float(max(1, decay_steps))
            if decay_type == "linear":
                factor = 1.0 - progress
            elif decay_type == "cosine":
                factor = 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress))
            else:
                factor = 1.0 - math.sqrt(progress)
            return max(0.0, factor * (1.0 - min_lr_ratio) + min_lr_ratio)
        return min_lr_ratio

    return f


def minicpm_exp_wsd(warmup, stable, half_life, min_ratio=0.0):
    """MiniCPM's WSD with exponential decay: 0.5 ** ((s - T) / T_half) after the stable phase."""

    def f(step):
        if step < warmup:
            return step / max(1, warmup)
        if step < warmup + stable:
            return 1.0
        return max(min_ratio, 0.5 ** ((step - warmup - stable) / half_life))

    return f


def deepseek_multistep(warmup, total):
    """DeepSeek LLM: peak after warmup, 31.6% after 80% of training, 10% after 90%."""

    def f(step):
        if step < warmup:
            return step / max(1, warmup)
        if step >= round(0.9 * total):
            return 0.1
        if step >= round(0.8 * total):
            return 0.316
        return 1.0

    return f


def torch_scheduler_lrs(make_scheduler, steps, base_lr=0.1):
    """The lr torch's real scheduler gives update k, k = 0..steps-1, in the standard loop."""
    param = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([param], lr=base_lr)
    sched = make_scheduler(opt)
    lrs = []
    for k in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        if k + 1 < steps:  # no step after the last: OneCycleLR refuses to go past its end
            opt.step()
            sched.step()
    return lrs
