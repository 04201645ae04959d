"""Issue 11 on a GPU: tensor lr read on the device (eager and in a captured CUDA graph), and the
kernel backends' refusals before any change. Skipped without a GPU."""

import pytest
import torch
from helpers import capture_step, clone_params, make_grads, make_params, run_steps

import fusedlr

pytestmark = pytest.mark.gpu
CUDA = "cuda"


def test_tensor_lr_is_read_on_the_device_and_by_graph_replays(kernel_backend):
    base = make_params([(4097,), (3, 5, 7)], device=CUDA)
    grads = make_grads(base, 6)
    lrs = [1e-2 * (k + 1) for k in range(6)]

    eager = clone_params(base)
    eager_opt = fusedlr.AdamW(eager, lr=0.0, max_grad_norm=1.0, backend=kernel_backend)
    for lr, step_grads in zip(lrs, grads):
        eager_opt.param_groups[0]["lr"] = lr  # a float: uploaded from the host each step
        run_steps(eager_opt, eager, [step_grads])

    lr_tensor = torch.tensor(lrs[0], device=CUDA)
    graphed = clone_params(base)
    opt = fusedlr.AdamW(graphed, lr=lr_tensor, max_grad_norm=1.0, backend=kernel_backend)
    for p, g in zip(graphed, grads[0]):
        p.grad = g.clone()
    graph = capture_step(opt)  # eager warm-up: step 0 at lrs[0]
    for lr, step_grads in zip(lrs[1:], grads[1:]):
        lr_tensor.fill_(lr)  # in place, on the device: what the replay must read
        for p, g in zip(graphed, step_grads):
            p.grad.copy_(g)
        graph.replay()
    torch.cuda.synchronize()
    for p, q in zip(graphed, eager):
        torch.testing.assert_close(p, q, rtol=2e-5, atol=2e-6)


def test_param_listed_twice_is_refused_on_cuda(kernel_backend):
    p = torch.nn.Parameter(torch.ones(3, device=CUDA))
    with pytest.warns(UserWarning, match="duplicate parameters"):
        opt = fusedlr.AdamW([p, p], lr=0.1, backend=kernel_backend)
    p.grad = torch.ones(3, device=CUDA)
    with pytest.raises(RuntimeError, match="listed twice"):
        opt.step()
    assert torch.equal(p, torch.ones(3, device=CUDA)) and not opt.state


def test_foreign_state_is_refused_before_the_kernels_read_it(kernel_backend):
    params = make_params([(5,), (7,)], device=CUDA)
    opt = fusedlr.AdamW(params, lr=0.1, backend=kernel_backend)
    run_steps(opt, params, make_grads(params, 1))
    del opt.state[params[1]]["exp_avg_sq"]  # an illegal memory access if a kernel read it
    before = [p.detach().clone() for p in params]
    run_grads = make_grads(params, 1, seed=4)[0]
    for p, g in zip(params, run_grads):
        p.grad = g
    with pytest.raises(KeyError, match="lacks 'exp_avg_sq'"):
        opt.step()
    torch.cuda.synchronize()
    for p, q in zip(params, before):
        assert torch.equal(p, q)
