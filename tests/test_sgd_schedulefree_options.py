"""SGD and Schedule-Free AdamW with torch.amp.GradScaler (unscaled and skipped inside the fused
step) against the references stepped by GradScaler as users do; and the bf16 options on the
Triton kernels against reference.py (the same rounding, to the bit)."""

import pytest
import torch
from helpers import FP32_TOL, clone_params, make_grads, make_params, run_steps

import fusedlr

schedulefree = pytest.importorskip("schedulefree")

STEPS = 8


def _grads_with_overflow(params):
    grads = make_grads(params, STEPS)
    grads[0][1] = grads[0][1].clone().fill_(float("inf"))  # a first step skipped: SGD's buffer stays unwritten
    grads[5][4] = grads[5][4].clone().fill_(float("nan"))
    return grads


def _scaled_run(opt, params, grads):
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=2)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = scaler.scale(g.clone())
        scaler.step(opt)
        scaler.update()
    return scaler.get_scale()


def _make_reference(kind, params):
    if kind == "sgd":
        return torch.optim.SGD(params, lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01, foreach=False)
    opt = schedulefree.AdamWScheduleFree(params, lr=0.01, warmup_steps=3, weight_decay=0.01)
    opt.train()
    return opt


def _make_ours(kind, params, backend, **options):
    if kind == "sgd":
        return fusedlr.SGD(params, lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01, backend=backend,
                           **options)  # fmt: skip
    opt = fusedlr.AdamWScheduleFree(params, lr=0.01, warmup_steps=3, weight_decay=0.01, backend=backend, **options)
    opt.train()
    return opt


@pytest.mark.parametrize("kind", ["sgd", "schedulefree"])
def test_gradscaler_matches_the_reference(backend, kind):
    base = make_params()
    grads = _grads_with_overflow(base)
    theirs = clone_params(base)
    ref = _make_reference(kind, theirs)
    ref_scale = _scaled_run(ref, theirs, grads)
    ours = clone_params(base)
    opt = _make_ours(kind, ours, backend)
    scale = _scaled_run(opt, ours, grads)
    assert scale == ref_scale
    assert int(opt.skipped_steps) == 2 and int(opt._schedule_step) == STEPS - 2
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, **FP32_TOL)
        for key, value in ref.state.get(q, {}).items():
            torch.testing.assert_close(opt.state[p][key], value, **FP32_TOL)


@pytest.mark.parametrize("kind", ["sgd", "schedulefree"])
@pytest.mark.parametrize(
    "options",
    [dict(stochastic_rounding=True, seed=7), dict(state_dtype=torch.bfloat16), dict(master_weights=True)],
    ids=["stochastic", "bf16-states", "master"],
)
def test_bf16_options_agree_across_backends(kernel_backend, kind, options):
    """The kernels round as reference.py does: stochastic rounding draws the same bits."""
    base = make_params(dtype=torch.bfloat16)
    grads = make_grads(base, 5)
    results = []
    for backend in ("torch", kernel_backend):
        params = clone_params(base)
        opt = _make_ours(kind, params, backend, max_grad_norm=2.0, **options)
        run_steps(opt, params, grads)
        results.append((params, opt))
    (ref_params, ref_opt), (params, opt) = results
    # bf16 stores: equal, or one unit in the last place where the two norms' last bits differ
    differing = sum(int((p != q).sum()) for p, q in zip(params, ref_params))
    assert differing <= 0.01 * sum(p.numel() for p in params)
    for p, q in zip(params, ref_params):
        assert p.dtype == torch.bfloat16
        torch.testing.assert_close(p.float(), q.float(), rtol=2**-7, atol=1e-6)
        for key, value in ref_opt.state[q].items():
            torch.testing.assert_close(opt.state[p][key].float(), value.float(), rtol=2**-7, atol=1e-6)


@pytest.mark.parametrize("kind", ["sgd", "schedulefree"])
def test_compiled_step_is_one_graph_matching_eager(backend, kind):
    """opt.step() inside torch.compile(fullgraph=True): one graph, the eager numbers."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    base = make_params([(33,), (4, 5)])
    grads = make_grads(base, 4)
    ours, eager = clone_params(base), clone_params(base)
    opt, eager_opt = (
        _make_ours(kind, ours, backend, max_grad_norm=1.0),
        _make_ours(kind, eager, backend, max_grad_norm=1.0),
    )
    counter = CompileCounterWithBackend("aot_eager")
    compiled_step = torch.compile(opt.step, backend=counter, fullgraph=True)
    for step_grads in grads:
        for p, q, g in zip(ours, eager, step_grads):
            p.grad, q.grad = g.clone(), g.clone()
        compiled_step()
        eager_opt.step()
    torch._dynamo.reset()
    assert counter.frame_count == 1
    for p, q in zip(ours, eager):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
