"""fusedlr.AdamW against torch.optim.AdamW(foreach=False) + clip_grad_norm_ + LambdaLR."""

import pytest
import torch
from helpers import assert_states_close, clone_params, make_grads, make_params, run_steps
from oracles import hf_constant_with_warmup, hf_cosine_with_min_lr, hf_inverse_sqrt, hf_linear, run_by_hand

import fusedlr
from fusedlr import schedules

STEPS = 22


def _torch_adamw(**options):
    return lambda groups: torch.optim.AdamW(groups, foreach=False, **options)


# (name, fusedlr optimizer options, torch group options, schedule, its HF lambda, max_grad_norm)
CASES = [
    ("plain", {}, {}, None, None, None),
    (
        "clip_active+cosine_min_lr",
        dict(weight_decay=0.1, betas=(0.9, 0.95)),
        dict(weight_decay=0.1, betas=(0.9, 0.95)),
        schedules.WarmupCosine(5, 18, min_lr_ratio=0.1),
        hf_cosine_with_min_lr(5, 18, min_lr_rate=0.1),
        1.0,
    ),
    (
        "clip_inactive+linear",
        dict(eps=1e-6),
        dict(eps=1e-6),
        schedules.WarmupLinear(3, 15),
        hf_linear(3, 15),
        1e4,
    ),
    (
        "amsgrad+maximize+inverse_sqrt",
        dict(amsgrad=True, maximize=True, weight_decay=0.05),
        dict(amsgrad=True, maximize=True, weight_decay=0.05),
        schedules.InverseSqrt(4),
        hf_inverse_sqrt(4),
        2.0,
    ),
    (
        "warmup_constant+cosine_cycles",
        dict(betas=(0.8, 0.99)),
        dict(betas=(0.8, 0.99)),
        schedules.WarmupConstant(7),
        hf_constant_with_warmup(7),
        0.5,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_adamw_matches_torch(backend, case):
    _, options, torch_options, schedule, lr_lambda, max_norm = case
    base = make_params()
    # Param 2 has no grad every third step: it must be skipped and its step must not advance.
    grads = make_grads(base, STEPS, skip=lambda step, i: i == 2 and step % 3 == 1)

    ours = clone_params(base)
    opt = fusedlr.AdamW(ours, lr=3e-2, schedule=schedule, max_grad_norm=max_norm, backend=backend, **options)
    norms = run_steps(opt, ours, grads)

    theirs = clone_params(base)
    groups = [dict(params=list(range(len(theirs))), lr=3e-2)]
    ref, ref_norms = run_by_hand(
        _torch_adamw(**torch_options), theirs, groups, grads, lr_lambda=lr_lambda, max_grad_norm=max_norm
    )
    assert_states_close(opt, ours, ref, theirs)
    if max_norm is not None:
        torch.testing.assert_close(torch.stack(norms), torch.stack(ref_norms), rtol=1e-5, atol=0)
    else:
        assert all(n is None for n in norms)
    assert float(opt.state[ours[2]]["step"]) == STEPS - len(range(1, STEPS, 3))


def test_adamw_param_groups_match_torch(backend):
    base = make_params()
    grads = make_grads(base, STEPS, scale=0.3)
    spec = [
        dict(params=[0, 1, 2], lr=1e-2, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8),
        dict(params=[3, 4, 5, 6], lr=5e-2, weight_decay=0.2, betas=(0.85, 0.98), eps=1e-5, amsgrad=True),
        dict(params=[7, 8, 9], lr=2e-3, weight_decay=0.01, betas=(0.5, 0.9), eps=1e-7, maximize=True),
    ]
    ours = clone_params(base)
    opt = fusedlr.AdamW(
        [dict(g, params=[ours[i] for i in g["params"]]) for g in spec],
        schedule=schedules.WarmupCosine(2, 20, num_cycles=1.5),
        max_grad_norm=1.0,
        backend=backend,
    )
    run_steps(opt, ours, grads)
    theirs = clone_params(base)
    from oracles import hf_cosine

    ref, _ = run_by_hand(_torch_adamw(), theirs, spec, grads, lr_lambda=hf_cosine(2, 20, 1.5), max_grad_norm=1.0)
    assert_states_close(opt, ours, ref, theirs)


def test_adamw_agc_then_clip_matches_seed_guide(backend):
    base = make_params()
    grads = make_grads(base, STEPS, scale=2.0)
    spec = [
        dict(params=[0, 1, 2, 3, 4], lr=1e-2, agc_clip_factor=0.02, agc_eps=1e-3),
        dict(params=[5, 6, 7], lr=1e-2, agc_clip_factor=0.5, agc_eps=0.1),
        dict(params=[8, 9], lr=1e-2),  # no AGC in this group
    ]
    ours = clone_params(base)
    opt = fusedlr.AdamW(
        [dict(g, params=[ours[i] for i in g["params"]]) for g in spec], max_grad_norm=3.0, backend=backend
    )
    norms = run_steps(opt, ours, grads)
    theirs = clone_params(base)
    ref, ref_norms = run_by_hand(_torch_adamw(), theirs, spec, grads, max_grad_norm=3.0)
    assert_states_close(opt, ours, ref, theirs)
    torch.testing.assert_close(torch.stack(norms), torch.stack(ref_norms), rtol=1e-5, atol=0)


def test_agc_without_global_clip(backend):
    base = make_params()
    grads = make_grads(base, 8, scale=2.0)
    ours = clone_params(base)
    opt = fusedlr.AdamW(ours, lr=1e-2, agc_clip_factor=0.05, backend=backend)
    norms = run_steps(opt, ours, grads)
    theirs = clone_params(base)
    spec = [dict(params=list(range(len(base))), lr=1e-2, agc_clip_factor=0.05)]
    ref, _ = run_by_hand(_torch_adamw(), theirs, spec, grads)
    assert_states_close(opt, ours, ref, theirs)
    assert norms[-1] is not None and norms[-1].ndim == 0


def test_grad_is_never_rewritten(backend):
    params = make_params()
    grads = make_grads(params, 1, scale=10.0)[0]
    opt = fusedlr.AdamW(params, max_grad_norm=0.1, agc_clip_factor=0.01, maximize=True, backend=backend)
    for p, g in zip(params, grads):
        p.grad = g.clone()
    opt.step()
    for p, g in zip(params, grads):
        assert torch.equal(p.grad, g)


def test_multi_chunk_tensor_with_default_chunk_size(backend, monkeypatch):
    from fusedlr import _plan

    monkeypatch.undo()  # the real 65,536-element chunks: a 70,000-element tensor spans two
    assert _plan.CHUNK_SIZE == 65536
    base = make_params([(70_000,), (3,)])
    grads = make_grads(base, 4)
    ours = clone_params(base)
    opt = fusedlr.AdamW(ours, lr=1e-2, max_grad_norm=1.0, backend=backend)
    run_steps(opt, ours, grads)
    theirs = clone_params(base)
    ref, _ = run_by_hand(_torch_adamw(), theirs, [dict(params=[0, 1], lr=1e-2)], grads, max_grad_norm=1.0)
    assert_states_close(opt, ours, ref, theirs)


def test_float64_params(backend):
    base = make_params(dtype=torch.float64)
    grads = make_grads(base, 10)
    ours = clone_params(base)
    opt = fusedlr.AdamW(ours, lr=1e-2, max_grad_norm=1.0, schedule=schedules.WarmupLinear(2, 10), backend=backend)
    run_steps(opt, ours, grads)
    theirs = clone_params(base)
    spec = [dict(params=list(range(len(base))), lr=1e-2)]
    ref, _ = run_by_hand(_torch_adamw(), theirs, spec, grads, lr_lambda=hf_linear(2, 10), max_grad_norm=1.0)
    assert_states_close(opt, ours, ref, theirs, rtol=1e-12, atol=1e-14)


def test_bfloat16_params_stay_within_twice_torchs_own_error(backend):
    """bf16 params, grads and state: the error against an fp64 run is at most 2x the error of
    torch.optim.AdamW run in bf16 (the Triton kernel does its maths in fp32 and rounds once)."""
    base = make_params([(4097,), (30, 7)], dtype=torch.float64)
    grads = make_grads(base, 10)
    spec = [dict(params=[0, 1], lr=1e-2)]

    def run(dtype, use_fusedlr):
        params = [p.detach().to(dtype).requires_grad_() for p in base]
        steps = [[g.to(dtype) for g in step] for step in grads]
        if use_fusedlr:
            run_steps(fusedlr.AdamW(params, lr=1e-2, max_grad_norm=1.0, backend=backend), params, steps)
        else:
            run_by_hand(_torch_adamw(), params, spec, steps, max_grad_norm=1.0)
        return [p.detach().double() for p in params]

    exact = run(torch.float64, False)
    ours, theirs = run(torch.bfloat16, True), run(torch.bfloat16, False)
    for e, o, t in zip(exact, ours, theirs):
        assert (o - e).abs().max() <= 2 * (t - e).abs().max()
