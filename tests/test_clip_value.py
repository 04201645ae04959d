"""clip_value: every grad element clamped in registers before AGC and the global norm, against
torch's recipe: clip_grad_value_, then (AGC and) clip_grad_norm_, then the optimizer step."""

import pytest
import torch
from helpers import assert_states_close, clone_params, make_grads, make_params
from lion_pytorch import Lion as ReferenceLion
from oracles import adaptive_clip_grad

import fusedlr
from fusedlr import schedules

STEPS = 8
CLIP = 0.75  # make_grads draws N(0, 1) * (1 + step % 3): a good share of elements is clamped


def _by_hand(opt, params, grads_per_step, clip_value, max_grad_norm=None, agc=None, scaler=None, lr_lambda=None):
    """The two-call recipe as users write it; returns the norms clip_grad_norm_ reports."""
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda) if lr_lambda is not None else None
    norms = []
    for grads in grads_per_step:
        for p, g in zip(params, grads):
            p.grad = None if g is None else (g.clone() if scaler is None else scaler.scale(g.clone()))
        if scaler is not None:
            scaler.unscale_(opt)
        torch.nn.utils.clip_grad_value_(params, clip_value, foreach=False)
        if agc is not None:
            adaptive_clip_grad(params, agc)
        if max_grad_norm is not None:
            norms.append(torch.nn.utils.clip_grad_norm_(params, max_grad_norm, foreach=False))
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        if sched is not None:
            sched.step()
    return norms


def _fused(opt, params, grads_per_step, scaler=None):
    norms = []
    for grads in grads_per_step:
        for p, g in zip(params, grads):
            p.grad = None if g is None else (g.clone() if scaler is None else scaler.scale(g.clone()))
        kept = [None if p.grad is None else p.grad.clone() for p in params]
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        # .grad is never rewritten
        assert all((k is None and p.grad is None) or torch.equal(k, p.grad) for k, p in zip(kept, params))
        norms.append(opt.last_grad_norm)
    return norms


CASES = {
    "value_only": dict(),
    "value+norm": dict(max_grad_norm=1.5),
    "value+agc+norm": dict(max_grad_norm=2.0, agc=0.05),
}


@pytest.mark.parametrize("case", list(CASES))
def test_adamw_matches_clip_grad_value_then_clip_grad_norm(backend, case):
    options = CASES[case]
    base = make_params()
    grads = make_grads(base, STEPS, skip=lambda step, i: i == 2 and step % 3 == 0)
    theirs = clone_params(base)
    ref = torch.optim.AdamW(theirs, lr=1e-2, weight_decay=0.1, foreach=False)
    ref_norms = _by_hand(ref, theirs, grads, CLIP, options.get("max_grad_norm"), options.get("agc"),
                         lr_lambda=schedules.WarmupCosine(2, STEPS))  # fmt: skip
    ours = clone_params(base)
    opt = fusedlr.AdamW(ours, lr=1e-2, weight_decay=0.1, clip_value=CLIP, max_grad_norm=options.get("max_grad_norm"),
                        agc_clip_factor=options.get("agc"), schedule=schedules.WarmupCosine(2, STEPS),
                        backend=backend)  # fmt: skip
    norms = _fused(opt, ours, grads)
    assert_states_close(opt, ours, ref, theirs)
    if options.get("max_grad_norm") is None:
        assert all(n is None for n in norms)
    else:  # last_grad_norm: after value clipping and AGC, what clip_grad_norm_ returned
        torch.testing.assert_close(torch.stack(norms), torch.stack(ref_norms), rtol=1e-5, atol=1e-6)


def test_lion_matches_lion_pytorch_with_value_and_norm_clipping(backend):
    base = make_params()
    grads = make_grads(base, STEPS)
    theirs = clone_params(base)
    ref = ReferenceLion(theirs, lr=1e-3, weight_decay=0.1)
    ref_norms = _by_hand(ref, theirs, grads, CLIP, max_grad_norm=1.0)
    ours = clone_params(base)
    opt = fusedlr.Lion(ours, lr=1e-3, weight_decay=0.1, clip_value=CLIP, max_grad_norm=1.0, backend=backend)
    norms = _fused(opt, ours, grads)
    assert_states_close(opt, ours, ref, theirs)
    torch.testing.assert_close(torch.stack(norms), torch.stack(ref_norms), rtol=1e-5, atol=1e-6)


def test_grad_scaler_unscales_before_clamping(backend):
    """With a GradScaler the clamp applies to unscaled grads, as after scaler.unscale_."""
    base = make_params()
    grads = make_grads(base, STEPS)
    grads[4][1] = grads[4][1].clone().fill_(float("inf"))  # a skipped step
    theirs = clone_params(base)
    ref = torch.optim.AdamW(theirs, lr=1e-2, foreach=False, maximize=True)
    ref_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=3)
    ref_norms = _by_hand(ref, theirs, grads, CLIP, max_grad_norm=1.0, scaler=ref_scaler)
    ours = clone_params(base)
    opt = fusedlr.AdamW(ours, lr=1e-2, maximize=True, clip_value=CLIP, max_grad_norm=1.0, backend=backend)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=3)
    norms = _fused(opt, ours, grads, scaler=scaler)
    assert_states_close(opt, ours, ref, theirs)
    assert scaler.get_scale() == ref_scaler.get_scale() and int(opt.skipped_steps) == 1
    finite = [i for i in range(STEPS) if i != 4]
    torch.testing.assert_close(torch.stack([norms[i] for i in finite]), torch.stack([ref_norms[i] for i in finite]))


def test_changing_clip_value_between_steps(backend):
    """The value lives in the device hyperparameter table: a new one applies at the next step."""
    base = make_params()
    grads = make_grads(base, 4)
    theirs = clone_params(base)
    ref = torch.optim.AdamW(theirs, lr=1e-2, foreach=False)
    ours = clone_params(base)
    opt = fusedlr.AdamW(ours, lr=1e-2, clip_value=0.5, max_grad_norm=3.0, backend=backend)
    for value, step_grads in zip((0.5, 0.2, 1.5, 0.05), grads):
        _by_hand(ref, theirs, [step_grads], value, max_grad_norm=3.0)
        opt.clip_value = value
        _fused(opt, ours, [step_grads])
    assert_states_close(opt, ours, ref, theirs)


def test_nan_survives_the_clamp_and_skips_the_step(backend):
    """torch.clamp keeps NaN (clip_grad_value_ does not hide it): with skip_nonfinite the step is skipped."""
    params = make_params()
    opt = fusedlr.AdamW(params, clip_value=0.1, skip_nonfinite=True, backend=backend)
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.zeros_like(p)
    params[1].grad[7] = float("nan")
    opt.step()
    assert int(opt.skipped_steps) == 1 and not torch.isfinite(opt.last_grad_norm)
    assert all(torch.equal(a, b) for a, b in zip(before, params))


def test_low_precision_kernels_match_the_torch_backend(kernel_backend):
    """bf16 params with fp32 master weights, the kernels against the reference step."""
    base = make_params(dtype=torch.bfloat16)
    grads = make_grads(base, 4)
    runs = []
    for backend in ("torch", kernel_backend):
        params = clone_params(base)
        opt = fusedlr.AdamW(params, lr=1e-2, clip_value=CLIP, max_grad_norm=2.0, master_weights=True, backend=backend)
        _fused(opt, params, grads)
        runs.append((opt, params))
    (opt_a, params_a), (opt_b, params_b) = runs
    for pa, pb in zip(params_a, params_b):
        torch.testing.assert_close(pa.float(), pb.float(), rtol=2**-7, atol=1e-6)
        torch.testing.assert_close(opt_a.state[pa]["master_param"], opt_b.state[pb]["master_param"], rtol=1e-5,
                                   atol=1e-6)  # fmt: skip


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), "1"])
def test_bad_clip_value(bad):
    with pytest.raises(ValueError, match="Invalid clip_value"):
        fusedlr.AdamW(make_params(), clip_value=bad)
    with pytest.raises(ValueError, match="Invalid clip_value"):
        fusedlr.Lion(make_params(), clip_value=bad)


@pytest.mark.parametrize("name,bad", [("clip_value", -1.0), ("clip_value", float("nan")), ("clip_value", "0.5"),
                                      ("max_grad_norm", 0.0), ("max_grad_norm", "1")])  # fmt: skip
def test_a_bad_threshold_assigned_between_steps_is_refused_at_the_step(backend, name, bad):
    """The README invites ``opt.clip_value = v`` between steps: the step checks the value as the
    constructor does (the same ValueError on every backend), before anything changes."""
    params = make_params()
    grads = make_grads(params, 2)
    opt = fusedlr.AdamW(params, lr=0.05, clip_value=0.5, max_grad_norm=1.0, backend=backend)
    for p, g in zip(params, grads[0]):
        p.grad = g.clone()
    opt.step()
    before = [p.detach().clone() for p in params]
    setattr(opt, name, bad)
    with pytest.raises(ValueError, match=f"Invalid {name}"):
        opt.step()
    assert all(torch.equal(p.detach(), b) for p, b in zip(params, before))
    assert int(opt._schedule_step) == 1
