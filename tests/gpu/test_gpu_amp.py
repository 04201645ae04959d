"""GradScaler and on-device skipping on CUDA, for both kernel backends; and a captured CUDA
graph that skips non-finite steps on the device exactly as eager steps do."""

import pytest
import torch
from helpers import assert_states_close, capture_step, clone_params, make_grads, make_params, run_steps

import fusedlr
from fusedlr import schedules

pytestmark = pytest.mark.gpu
CUDA = "cuda"


def _overflowing_grads(params, steps=10):
    grads = make_grads(params, steps)
    grads[3][1] = grads[3][1].clone().fill_(float("inf"))
    grads[7][0] = grads[7][0].clone().fill_(float("nan"))
    return grads


@pytest.mark.parametrize("unscale_first", [False, True])
def test_gradscaler_matches_torch_on_cuda(kernel_backend, unscale_first):
    base = make_params([(4097,), (33, 7), (1,)], device=CUDA)
    grads = _overflowing_grads(base)
    results = []
    for side in ("torch", "fusedlr"):
        params = clone_params(base)
        if side == "torch":
            opt = torch.optim.AdamW(params, lr=1e-2, foreach=False)
        else:
            opt = fusedlr.AdamW(params, lr=1e-2, max_grad_norm=1.0, backend=kernel_backend)
        scaler = torch.amp.GradScaler("cuda", init_scale=2.0**10, growth_interval=2)
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = scaler.scale(g.clone())
            if side == "torch" or unscale_first:
                scaler.unscale_(opt)
            if side == "torch":
                torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=False)
            scaler.step(opt)
            scaler.update()
        results.append((opt, params))
    assert_states_close(results[1][0], results[1][1], results[0][0], results[0][1])


def test_captured_step_skips_nonfinite_steps_like_eager(kernel_backend):
    base = make_params([(4097,), (300, 257), (1,)], device=CUDA)
    grads = _overflowing_grads(base, steps=12)
    schedule = schedules.WarmupCosine(2, 12)

    eager = clone_params(base)
    eager_opt = fusedlr.AdamW(eager, lr=1e-2, max_grad_norm=1.0, schedule=schedule, skip_nonfinite=True,
                              backend=kernel_backend)  # fmt: skip
    run_steps(eager_opt, eager, grads)

    graphed = clone_params(base)
    opt = fusedlr.AdamW(graphed, lr=1e-2, max_grad_norm=1.0, schedule=schedule, skip_nonfinite=True,
                        backend=kernel_backend)  # fmt: skip
    for p, g in zip(graphed, grads[0]):
        p.grad = g.clone()
    graph = capture_step(opt)  # after an eager warm-up step: step 0
    for step_grads in grads[1:]:
        for p, g in zip(graphed, step_grads):
            p.grad.copy_(g)
        graph.replay()
    torch.cuda.synchronize()
    assert_states_close(opt, graphed, eager_opt, eager)
    assert int(opt.skipped_steps) == int(eager_opt.skipped_steps) == 2
