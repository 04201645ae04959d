"""clip_value on CUDA, both kernel backends: torch's clip_grad_value_ then clip_grad_norm_ then the
step, with a GradScaler, in bf16 with master weights, and captured in a CUDA graph."""

import pytest
import torch
from helpers import assert_states_close, capture_step, clone_params, make_grads, make_params

import fusedlr
from fusedlr import schedules

pytestmark = pytest.mark.gpu
CUDA = "cuda"
SHAPES = [(4097,), (300, 257), (1,), (70_000,)]  # 70,000: two 65,536-element chunks


def _recipe(opt, params, grads, clip_value, max_grad_norm, scaler=None):
    norms = []
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.clone() if scaler is None else scaler.scale(g.clone())
        if scaler is not None:
            scaler.unscale_(opt)
        torch.nn.utils.clip_grad_value_(params, clip_value, foreach=False)
        norms.append(torch.nn.utils.clip_grad_norm_(params, max_grad_norm, foreach=False))
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
    return norms


def _fused(opt, params, grads, scaler=None):
    norms = []
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.clone() if scaler is None else scaler.scale(g.clone())
        before = [p.grad.clone() for p in params]
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        assert all(torch.equal(b, p.grad) for b, p in zip(before, params))  # .grad never rewritten
        norms.append(opt.last_grad_norm)
    return norms


@pytest.mark.parametrize("kind", ["adamw", "lion"])
@pytest.mark.parametrize("with_scaler", [False, True])
def test_clip_value_matches_the_two_call_recipe_on_cuda(kernel_backend, kind, with_scaler):
    base = make_params(SHAPES, device=CUDA)
    grads = make_grads(base, 8)
    theirs = clone_params(base)
    if kind == "adamw":
        ref = torch.optim.AdamW(theirs, lr=1e-2, weight_decay=0.1, foreach=False)
    else:
        from lion_pytorch import Lion

        ref = Lion(theirs, lr=1e-3, weight_decay=0.1)
    new_scaler = lambda: torch.amp.GradScaler(CUDA, init_scale=2.0**12) if with_scaler else None  # noqa: E731
    ref_norms = _recipe(ref, theirs, grads, 0.75, 2.0, new_scaler())
    ours = clone_params(base)
    make = fusedlr.AdamW if kind == "adamw" else fusedlr.Lion
    opt = make(ours, lr=1e-2 if kind == "adamw" else 1e-3, weight_decay=0.1, clip_value=0.75, max_grad_norm=2.0,
               backend=kernel_backend)  # fmt: skip
    norms = _fused(opt, ours, grads, new_scaler())
    assert_states_close(opt, ours, ref, theirs)
    torch.testing.assert_close(torch.stack(norms), torch.stack(ref_norms), rtol=1e-5, atol=1e-6)


def test_clip_value_bf16_master_weights_match_the_torch_backend(kernel_backend):
    base = make_params(SHAPES, dtype=torch.bfloat16, device=CUDA)
    grads = make_grads(base, 6)
    runs = []
    for backend in ("torch", kernel_backend):
        params = clone_params(base)
        opt = fusedlr.AdamW(params, lr=1e-2, clip_value=0.5, max_grad_norm=1.0, master_weights=True, backend=backend)
        _fused(opt, params, grads)
        runs.append((opt, params))
    (ref, ref_params), (opt, params) = runs
    for p, q in zip(params, ref_params):
        torch.testing.assert_close(opt.state[p]["master_param"], ref.state[q]["master_param"], rtol=1e-5, atol=1e-6)


def test_captured_step_with_clip_value_matches_eager(kernel_backend):
    base = make_params(SHAPES, device=CUDA)
    grads = make_grads(base, 6)
    schedule = schedules.WarmupCosine(2, 6)
    eager = clone_params(base)
    eager_opt = fusedlr.AdamW(eager, lr=1e-2, clip_value=0.3, max_grad_norm=1.0, schedule=schedule,
                              backend=kernel_backend)  # fmt: skip
    _fused(eager_opt, eager, grads)
    graphed = clone_params(base)
    opt = fusedlr.AdamW(graphed, lr=1e-2, clip_value=0.3, max_grad_norm=1.0, schedule=schedule,
                        backend=kernel_backend)  # fmt: skip
    for p, g in zip(graphed, grads[0]):
        p.grad = g.clone()
    graph = capture_step(opt)  # the eager warm-up is step 0
    for step_grads in grads[1:]:
        for p, g in zip(graphed, step_grads):
            p.grad.copy_(g)
        graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(eager, graphed):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
