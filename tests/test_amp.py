"""torch.amp.GradScaler and skip_nonfinite: unscaling and skipping inside the fused step.

fusedlr sets ``_step_supports_amp_scaling``: GradScaler hands it ``grad_scale`` and
``found_inf`` and lets it unscale the grads inside the passes (norms and last_grad_norm are of
unscaled grads) and skip an overflowing step on the device: no param, state, step count or
schedule counter changes.
"""

import pytest
import torch
from helpers import assert_states_close, clone_params, make_grads, make_params

import fusedlr
from fusedlr import schedules

STEPS = 10
BAD_STEPS = {3, 7}  # an inf, then a nan, lands in one grad at these steps


def _grads_with_overflow(params):
    grads = make_grads(params, STEPS)
    grads[3][1] = grads[3][1].clone().fill_(float("inf"))
    grads[7][4] = grads[7][4].clone().fill_(float("nan"))
    return grads


def _scaler():
    return torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=2)


def _run_torch(params, grads, max_norm):
    opt = torch.optim.AdamW(params, lr=1e-2, foreach=False)
    scaler = _scaler()
    norms = []
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = scaler.scale(g.clone())
        scaler.unscale_(opt)
        norms.append(torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=False))
        scaler.step(opt)
        scaler.update()
    return opt, norms, scaler.get_scale()


@pytest.mark.parametrize("unscale_first", [False, True], ids=["fused-unscale", "scaler.unscale_"])
def test_gradscaler_matches_torch(backend, unscale_first):
    base = make_params()
    grads = _grads_with_overflow(base)
    theirs = clone_params(base)
    ref, ref_norms, ref_scale = _run_torch(theirs, grads, 1.0)

    ours = clone_params(base)
    opt = fusedlr.AdamW(ours, lr=1e-2, max_grad_norm=1.0, backend=backend)
    scaler = _scaler()
    norms = []
    for step_grads in grads:
        for p, g in zip(ours, step_grads):
            p.grad = scaler.scale(g.clone())
        if unscale_first:
            scaler.unscale_(opt)
        scaler.step(opt)
        scaler.update()
        norms.append(opt.last_grad_norm)
    assert_states_close(opt, ours, ref, theirs)
    assert scaler.get_scale() == ref_scale
    good = [k for k in range(STEPS) if k not in BAD_STEPS]
    torch.testing.assert_close(torch.stack([norms[k] for k in good]), torch.stack([ref_norms[k] for k in good]),
                               rtol=1e-5, atol=0)  # fmt: skip
    assert float(opt.state[ours[0]]["step"]) == STEPS - len(BAD_STEPS)
    assert int(opt.skipped_steps) == len(BAD_STEPS)


def _without_bad_steps(grads):
    return [g for k, g in enumerate(grads) if k not in BAD_STEPS]


@pytest.mark.parametrize("cls", [fusedlr.AdamW, fusedlr.Lion])
def test_skip_nonfinite_is_a_step_that_never_happened(backend, cls):
    base = make_params()
    grads = _grads_with_overflow(base)
    schedule = schedules.WarmupLinear(3, 12)

    ours = clone_params(base)
    opt = cls(ours, lr=1e-2, schedule=schedule, skip_nonfinite=True, backend=backend)
    for step_grads in grads:
        for p, g in zip(ours, step_grads):
            p.grad = g.clone()
        opt.step()

    clean = clone_params(base)
    clean_opt = cls(clean, lr=1e-2, schedule=schedule, backend=backend)
    for step_grads in _without_bad_steps(grads):
        for p, g in zip(clean, step_grads):
            p.grad = g.clone()
        clean_opt.step()

    assert_states_close(opt, ours, clean_opt, clean, rtol=0, atol=0)
    assert int(opt.skipped_steps) == len(BAD_STEPS)
    assert int(opt.state_dict()["schedule_step"]) == STEPS - len(BAD_STEPS)


def test_without_skip_nonfinite_a_nan_grad_propagates_as_in_torch(backend):
    params = make_params([(4,)])
    opt = fusedlr.AdamW(params, backend=backend)
    params[0].grad = torch.tensor([1.0, float("nan"), 1.0, 1.0])
    opt.step()
    assert torch.isnan(params[0].detach()[1]) and torch.isfinite(params[0].detach()[0])
    assert int(opt.skipped_steps) == 0
