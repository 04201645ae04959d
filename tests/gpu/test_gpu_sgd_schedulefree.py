"""SGD and Schedule-Free AdamW on the GPU kernels (compiled Triton, and the CUDA extension):
parity with torch.optim.SGD and the schedulefree package, the two kernel backends against each
other, bf16 master weights, CUDA-graph capture. Skipped without a GPU."""

import pytest
import torch
from helpers import (
    FP32_TOL,
    assert_runs_as_close_to_the_oracle,
    assert_same_storage,
    capture_step,
    clone_params,
    make_grads,
    make_params,
    run_steps,
)
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
def test_sgd_matches_torch_on_cuda(kernel_backend, hypers):
    base = make_params(SHAPES, device=CUDA)
    grads = make_grads(base, 12, skip=lambda step, i: i == 2 and step % 3 == 1)
    ours = clone_params(base)
    opt = fusedlr.SGD(ours, lr=0.03, schedule=schedules.WarmupCosine(3, 12), max_grad_norm=5.0,
                      backend=kernel_backend, **hypers)  # fmt: skip
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


def test_schedulefree_matches_the_package_on_cuda(kernel_backend):
    schedulefree = pytest.importorskip("schedulefree")
    base = make_params(SHAPES, device=CUDA)
    grads = make_grads(base, 12, skip=lambda step, i: i == 2 and step % 3 == 1)
    ours = clone_params(base)
    opt = fusedlr.AdamWScheduleFree(ours, lr=0.01, warmup_steps=4, weight_decay=0.05, max_grad_norm=5.0,
                                    backend=kernel_backend)  # fmt: skip
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
def test_bf16_master_and_graph_capture(kernel_backend, kind):
    """bf16 params with an fp32 master copy, stepped by a captured CUDA graph: the replays match
    eager steps of a twin optimizer."""
    base = make_params(SHAPES, dtype=torch.bfloat16, device=CUDA)
    grads = make_grads(base, 4)

    def make(params):
        if kind == "sgd":
            return fusedlr.SGD(params, lr=0.03, momentum=0.9, master_weights=True, max_grad_norm=1.0,
                               backend=kernel_backend)  # fmt: skip
        opt = fusedlr.AdamWScheduleFree(params, lr=0.01, warmup_steps=2, master_weights=True, max_grad_norm=1.0,
                                        backend=kernel_backend)  # fmt: skip
        opt.train()
        return opt

    eager_params, graph_params = clone_params(base), clone_params(base)
    eager, graphed = make(eager_params), make(graph_params)
    for p, g in zip(graph_params, grads[0]):
        p.grad = g.clone()
    graph = capture_step(graphed)  # the eager warm-up is step 0; capturing runs nothing
    run_steps(eager, eager_params, grads[:1])
    for step_grads in grads[1:]:
        for p, g in zip(graph_params, step_grads):
            p.grad.copy_(g)
        graph.replay()
        run_steps(eager, eager_params, [step_grads])
    torch.cuda.synchronize()
    for p, q in zip(graph_params, eager_params):
        for a, b in ((p, q), (graphed.state[p]["master_param"], eager.state[q]["master_param"])):
            differ = a != b
            assert not differ.any(), f"{int(differ.sum())} of {a.numel()} differ, by up to {(a - b).abs().max()}"


@pytest.mark.parametrize("kind", ["sgd", "sgd-nesterov", "sgd-decoupled", "schedulefree"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_cuda_matches_triton(kind, dtype):
    """The two kernel backends on the same CUDA tensors (bf16: stochastic rounding, the same bits
    drawn), after clipped, scheduled steps with some grads missing."""
    if "cuda" not in fusedlr.available_backends():
        pytest.skip("the CUDA extension is not built")
    base = make_params(SHAPES, device=CUDA, dtype=dtype)
    grads = make_grads(base, 6, skip=lambda step, i: i == 2 and step % 3 == 1)
    low = dict(stochastic_rounding=True, seed=3) if dtype == torch.bfloat16 else {}
    lr = 0.01 if kind == "schedulefree" else 0.03

    def run(backend, params, options):
        common = dict(max_grad_norm=2.0, backend=backend, **options)
        if kind == "schedulefree":
            opt = fusedlr.AdamWScheduleFree(params, lr=lr, warmup_steps=2, weight_decay=0.05, **common)
            opt.train()
        else:
            opt = fusedlr.SGD(params, lr=lr, momentum=0.9, weight_decay=0.01, nesterov=kind == "sgd-nesterov",
                              decoupled_weight_decay=kind == "sgd-decoupled",
                              schedule=schedules.WarmupCosine(2, 6), **common)  # fmt: skip
        run_steps(opt, params, [[g if g is None else g.to(params[0].dtype) for g in step] for step in grads])
        return params, opt

    (theirs, ref), (ours, opt) = run("triton", clone_params(base), low), run("cuda", clone_params(base), low)
    for p, q in zip(ours, theirs):
        assert opt.state[p].keys() == ref.state[q].keys()
        if dtype != torch.bfloat16:
            torch.testing.assert_close(p, q, **FP32_TOL)
            for key, value in ref.state[q].items():
                torch.testing.assert_close(opt.state[p][key], value, **FP32_TOL)
        else:  # an element that parts stays apart (stochastic rounding then draws for other values)
            assert_same_storage(p.detach(), q.detach(), atol=lr * 2**-6, rare=False)
            for key, value in ref.state[q].items():
                atol = 2**-8 * value.abs().max().item() if value.numel() else 0.0
                assert_same_storage(opt.state[p][key], value, atol=atol, rare=False)
    if dtype == torch.bfloat16:  # such elements are rare: both end as near fp32 training
        oracle, _ = run("torch", [p.detach().float().requires_grad_() for p in base], {})
        assert_runs_as_close_to_the_oracle(ours, opt, theirs, ref, oracle, base, "cuda vs triton")
