"""bf16 training on the GPU: both kernel backends against the torch backend for master weights,
stochastic rounding and bf16 states; a small GPT-style model trained in bf16 tracking the
fp32-master reference loss curve; CUDA-graph replays of a mixed-precision step. Skipped
without a GPU."""

import pytest
import tiny_gpt
import torch
from helpers import (
    assert_runs_as_close_to_the_oracle,
    assert_same_storage,
    capture_step,
    make_grads,
    make_params,
    run_steps,
)

import fusedlr
from fusedlr import schedules

pytestmark = pytest.mark.gpu
CUDA = "cuda"
SHAPES = [(1,), (4097,), (3, 5, 7), (70_000,), (300, 257)] + [(64,)] * 20
OPTIONS = {
    "master": dict(master_weights=True),
    "master-fp32-main-grad": dict(master_weights=True, grad_attribute="main_grad"),
    "master-bf16-states": dict(master_weights=True, state_dtype=torch.bfloat16),
    "stochastic": dict(stochastic_rounding=True, seed=3),
    "bf16-states": dict(state_dtype=torch.bfloat16),
}


def _bf16(base):
    return [p.detach().to(torch.bfloat16).requires_grad_() for p in base]


def _fp32(base):
    return [p.detach().to(torch.bfloat16).float().requires_grad_() for p in base]


@pytest.mark.parametrize("kind", ["adamw", "lion"])
@pytest.mark.parametrize("option", list(OPTIONS))
def test_kernel_backends_match_the_torch_backend_on_cuda(kernel_backend, kind, option):
    base = make_params(SHAPES, dtype=torch.float64, device=CUDA)
    options = OPTIONS[option]
    grad_dtype = torch.float32 if options.get("grad_attribute") else torch.bfloat16
    grads = [[g.to(grad_dtype) for g in step] for step in make_grads(base, 8, scale=2.0)]
    results = []
    # The oracle: fp32 params and states from the same bf16 start, the same grads.
    for backend, params, run_options in (("torch", _fp32(base), {}), ("torch", _bf16(base), options),
                                         (kernel_backend, _bf16(base), options)):  # fmt: skip
        cls = fusedlr.AdamW if kind == "adamw" else fusedlr.Lion
        opt = cls(params, lr=1e-2, weight_decay=0.1, max_grad_norm=1.0, schedule=schedules.WarmupCosine(2, 8),
                  backend=backend, **run_options)  # fmt: skip
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                grad = g.float() if p.dtype == torch.float32 else g.clone()
                setattr(p, run_options.get("grad_attribute", "grad"), grad)
            opt.step()
        results.append((params, opt))
    (oracle, _), (theirs, ref), (ours, opt) = results
    for p, q in zip(ours, theirs):
        assert_same_storage(p.detach(), q.detach(), atol=1e-2 * 2**-6, rare=False)
        for name, value in ref.state[q].items():
            # A moment one unit off at some step stays off, decaying: near zero that is far in
            # relative terms, so the absolute slack is half a unit at the largest moment.
            assert_same_storage(opt.state[p][name], value, atol=2**-8 * value.abs().max().item(), rare=False)
    # Elements that part are rare over the model: it ends as near fp32 training as the reference.
    assert_runs_as_close_to_the_oracle(ours, opt, theirs, ref, oracle, _bf16(base), kernel_backend)


def test_bf16_gpt_training_tracks_the_fp32_master_reference(kernel_backend):
    """300 steps of a 2-layer GPT in bf16 on the GPU (tests/tiny_gpt.py)."""
    losses = tiny_gpt.train_all(device=CUDA, steps=300, backend=kernel_backend)
    tiny_gpt.check_tracking(losses)


@pytest.mark.parametrize("option", ["master", "stochastic"])
def test_cuda_graph_replays_of_mixed_precision_steps_match_eager(kernel_backend, option):
    base = make_params(SHAPES, dtype=torch.float64, device=CUDA)
    grads = [[g.to(torch.bfloat16) for g in step] for step in make_grads(base, 10, scale=3.0)]
    grads[4][1] = grads[4][1].clone().fill_(float("inf"))  # a skipped step inside the replays

    def make(params):
        return fusedlr.AdamW(params, lr=1e-2, max_grad_norm=1.0, schedule=schedules.WarmupCosine(2, 10),
                             skip_nonfinite=True, backend=kernel_backend, **OPTIONS[option])  # fmt: skip

    eager = _bf16(base)
    eager_opt = make(eager)
    run_steps(eager_opt, eager, grads)

    graphed = _bf16(base)
    opt = make(graphed)
    for p, g in zip(graphed, grads[0]):
        p.grad = g.clone()
    graph = capture_step(opt)  # after an eager warm-up step: step 0
    for step_grads in grads[1:]:
        for p, g in zip(graphed, step_grads):
            p.grad.copy_(g)
        graph.replay()
    torch.cuda.synchronize()
    assert int(opt.skipped_steps) == 1 == int(eager_opt.skipped_steps)
    for p, q in zip(graphed, eager):
        assert torch.equal(p.detach(), q.detach())
        for name, value in eager_opt.state[q].items():
            assert torch.equal(opt.state[p][name], value), name
