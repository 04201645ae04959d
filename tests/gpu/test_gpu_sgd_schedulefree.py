"""SGD and Schedule-Free AdamW on compiled Triton kernels (CUDA tensors): parity with
torch.optim.SGD and the schedulefree package, bf16 master weights, CUDA-graph capture.
Skipped without a GPU. (The CUDA extension implements neither: backend="cuda" refuses them.)"""

import pytest
import torch
from helpers import FP32_TOL, capture_step, clone_params, make_grads, make_params, run_steps
from oracles import hf_cosine, run_by_hand

import fusedlr
from fusedlr import schedules

pytestmark = pytest.mark.gpu
CUDA = "cuda"
SHAPES = [(1,), (4097,), (3, 5, 7), (0,), "transposed", (70_000,), (300, 257)] + [(64,)] * 40


@pytest.mark.parametrize(
    "hypers",
    [
        dict(momentum=0.9, dampening=0.0, nesterov=False, weight_decay=0.01),
        dict(momentum=0.8, dampening=0.3, nesterov=False, weight_decay=0.0, maximize=True),
        dict(momentum=0.9, dampening=0.0, nesterov=True, weight_decay=0.1),
        dict(momentum=0.0, weight_decay=0.05),
    ],
)
def test_sgd_matches_torch_on_cuda(hypers):
    base = make_params(SHAPES, device=CUDA)
    grads = make_grads(base, 12, skip=lambda step, i: i == 2 and step % 3 == 1)
    ours = clone_params(base)
    opt = fusedlr.SGD(ours, lr=0.03, schedule=schedules.WarmupCosine(3, 12), max_grad_norm=5.0, backend="triton",
                      **hypers)  # fmt: skip
    norms = run_steps(opt, ours, grads)
    theirs = clone_params(base)
    spec = [dict(params=list(range(len(base))), lr=0.03, **hypers)]
    ref, ref_norms = run_by_hand(lambda g: torch.optim.SGD(g, foreach=False), theirs, spec, grads,
                                 lr_lambda=hf_cosine(3, 12), max_grad_norm=5.0)  # fmt: skip
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, **FP32_TOL)
        if "momentum_buffer" in ref.state.get(q, {}):
            torch.testing.assert_close(opt.state[p]["momentum_buffer"], ref.state[q]["momentum_buffer"], **FP32_TOL)
    torch.testing.assert_close(torch.stack(norms), torch.stack(ref_norms), rtol=1e-5, atol=0)


def test_schedulefree_matches_the_package_on_cuda():
    schedulefree = pytest.importorskip("schedulefree")
    base = make_params(SHAPES, device=CUDA)
    grads = make_grads(base, 12, skip=lambda step, i: i == 2 and step % 3 == 1)
    ours = clone_params(base)
    opt = fusedlr.AdamWScheduleFree(ours, lr=0.01, warmup_steps=4, weight_decay=0.05, max_grad_norm=5.0,
                                    backend="triton")  # fmt: skip
    opt.train()
    run_steps(opt, ours, grads)
    theirs = clone_params(base)

    def package(groups):
        ref = schedulefree.AdamWScheduleFree(groups)
        ref.train()
        return ref

    spec = [dict(params=list(range(len(base))), lr=0.01, warmup_steps=4, weight_decay=0.05)]
    ref, _ = run_by_hand(package, theirs, spec, grads, max_grad_norm=5.0)
    opt.eval()
    ref.eval()
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, **FP32_TOL)
        for key in ("z", "exp_avg_sq"):
            torch.testing.assert_close(opt.state[p][key], ref.state[q][key], **FP32_TOL)


@pytest.mark.parametrize("kind", ["sgd", "schedulefree"])
def test_bf16_master_and_graph_capture(kind):
    """bf16 params with an fp32 master copy, stepped by a captured CUDA graph: the replays match
    eager steps of a twin optimizer."""
    base = make_params(SHAPES, dtype=torch.bfloat16, device=CUDA)
    grads = make_grads(base, 4)

    def make(params):
        if kind == "sgd":
            return fusedlr.SGD(params, lr=0.03, momentum=0.9, master_weights=True, max_grad_norm=1.0, backend="triton")
        opt = fusedlr.AdamWScheduleFree(params, lr=0.01, warmup_steps=2, master_weights=True, max_grad_norm=1.0,
                                        backend="triton")  # fmt: skip
        opt.train()
        return opt

    eager_params, graph_params = clone_params(base), clone_params(base)
    eager, graphed = make(eager_params), make(graph_params)
    for p, g in zip(graph_params, grads[0]):
        p.grad = g.clone()
    graph = capture_step(graphed)  # one eager warm-up step, then the captured one
    run_steps(eager, eager_params, grads[:1] * 2)
    for step_grads in grads[1:]:
        for p, g in zip(graph_params, step_grads):
            p.grad.copy_(g)
        graph.replay()
        run_steps(eager, eager_params, [step_grads])
    torch.cuda.synchronize()
    for p, q in zip(graph_params, eager_params):
        assert torch.equal(p, q)
        assert torch.equal(graphed.state[p]["master_param"], eager.state[q]["master_param"])
