"""The kernel backends (triton, cuda) on CUDA tensors: parity with torch and lion-pytorch and with
each other, no host sync, CUDA-graph capture, no recompilation on a new lr, int64 offsets.
Skipped without a GPU."""

import pytest
import torch
from helpers import assert_states_close, capture_step, clone_params, make_grads, make_params, run_steps
from oracles import hf_cosine_with_min_lr, hf_inverse_sqrt, hf_linear, run_by_hand

import fusedlr
from fusedlr import schedules

pytestmark = pytest.mark.gpu
CUDA = "cuda"
SHAPES = [(1,), (4097,), (3, 5, 7), (0,), "transposed", (70_000,), (300, 257)] + [(64,)] * 40


@pytest.mark.parametrize(
    "schedule, lr_lambda, max_norm, options",
    [
        (schedules.WarmupCosine(5, 18, min_lr_ratio=0.1), hf_cosine_with_min_lr(5, 18, min_lr_rate=0.1), 1.0, {}),
        (schedules.WarmupLinear(3, 15), hf_linear(3, 15), 1e4, dict(amsgrad=True)),
        (schedules.InverseSqrt(4), hf_inverse_sqrt(4), 2.0, dict(maximize=True)),
    ],
)
def test_adamw_matches_torch_on_cuda(kernel_backend, schedule, lr_lambda, max_norm, options):
    base = make_params(SHAPES, device=CUDA)
    grads = make_grads(base, 22, skip=lambda step, i: i == 2 and step % 3 == 1)
    ours = clone_params(base)
    opt = fusedlr.AdamW(ours, lr=3e-2, weight_decay=0.1, schedule=schedule, max_grad_norm=max_norm,
                        backend=kernel_backend, **options)  # fmt: skip
    norms = run_steps(opt, ours, grads)
    theirs = clone_params(base)
    spec = [dict(params=list(range(len(base))), lr=3e-2, weight_decay=0.1, **options)]
    ref, ref_norms = run_by_hand(lambda g: torch.optim.AdamW(g, foreach=False), theirs, spec, grads,
                                 lr_lambda=lr_lambda, max_grad_norm=max_norm)  # fmt: skip
    assert_states_close(opt, ours, ref, theirs)
    torch.testing.assert_close(torch.stack(norms), torch.stack(ref_norms), rtol=1e-5, atol=0)


def test_lion_with_agc_matches_lion_pytorch_on_cuda(kernel_backend):
    from lion_pytorch import Lion

    base = make_params(SHAPES, device=CUDA)
    grads = make_grads(base, 22, scale=3.0)
    spec = [dict(params=list(range(len(base))), lr=1e-3, weight_decay=0.1, agc_clip_factor=0.05)]
    ours = clone_params(base)
    opt = fusedlr.Lion(ours, lr=1e-3, weight_decay=0.1, agc_clip_factor=0.05, max_grad_norm=1.0,
                       schedule=schedules.WarmupCosine(3, 20), backend=kernel_backend)  # fmt: skip
    run_steps(opt, ours, grads)
    theirs = clone_params(base)
    from oracles import hf_cosine

    ref, _ = run_by_hand(lambda g: Lion(g), theirs, spec, grads, lr_lambda=hf_cosine(3, 20), max_grad_norm=1.0)
    assert_states_close(opt, ours, ref, theirs)


@pytest.mark.parametrize("cls", [fusedlr.AdamW, fusedlr.Lion])
def test_kernel_backends_match_the_torch_backend_on_cuda(kernel_backend, cls):
    base = make_params(SHAPES, device=CUDA)
    grads = make_grads(base, 10, scale=2.0)
    results = []
    for backend in ("torch", kernel_backend):
        params = clone_params(base)
        opt = cls(params, lr=1e-3, max_grad_norm=1.0, agc_clip_factor=0.1, schedule=schedules.WarmupCosine(2, 10),
                  backend=backend)  # fmt: skip
        run_steps(opt, params, grads)
        results.append((opt, params))
    assert_states_close(*results[0], *results[1])


def test_step_does_not_synchronise(kernel_backend):
    params = make_params(SHAPES, device=CUDA)
    opt = fusedlr.AdamW(params, max_grad_norm=1.0, agc_clip_factor=0.1, schedule=schedules.WarmupCosine(5, 100),
                        backend=kernel_backend)  # fmt: skip
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()  # builds and uploads the plan
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(5):
            opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _compiled_variants(kernel):
    return sum(len(cache[0]) for cache in kernel.device_caches.values())


def test_new_lr_and_schedule_do_not_recompile():
    from fusedlr._triton import kernels

    params = make_params([(1000,), (33,)], device=CUDA)
    opt = fusedlr.AdamW(params, max_grad_norm=1.0, schedule=schedules.WarmupLinear(2, 50), backend="triton")
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    before = [_compiled_variants(k) for k in (kernels._finalize_kernel, kernels._update_kernel)]
    for lr in (1e-2, 3e-4, 0.5):
        opt.param_groups[0]["lr"] = lr
        opt.param_groups[0]["weight_decay"] = lr / 10
        opt.step()
    after = [_compiled_variants(k) for k in (kernels._finalize_kernel, kernels._update_kernel)]
    assert before == after


@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_properties(0).total_memory < 48 * 2**30,
    reason="needs about 40 GB of GPU memory",
)
def test_tensor_over_two_billion_elements(kernel_backend):
    """int64 offsets: the last elements of a (2**31 + 4099)-element tensor are updated right."""
    numel = 2**31 + 4099
    param = torch.zeros(numel, device=CUDA, requires_grad=True)
    tail = slice(numel - 5000, numel)
    param.data[tail] = torch.linspace(-1, 1, 5000, device=CUDA)
    param.grad = torch.zeros(numel, device=CUDA)
    param.grad[tail] = torch.linspace(2, -3, 5000, device=CUDA)
    expected = param.detach()[tail].clone().requires_grad_()
    expected.grad = param.grad[tail].clone()
    opt = fusedlr.AdamW([param], lr=1e-2, backend=kernel_backend)
    opt.step()
    torch.optim.AdamW([expected], lr=1e-2, foreach=False).step()
    torch.testing.assert_close(param.detach()[tail], expected.detach(), rtol=2e-5, atol=2e-6)
    torch.testing.assert_close(opt.state[param]["exp_avg_sq"][tail], (0.001 * expected.grad**2))


def test_cpu_saved_state_dict_continues_on_cuda(kernel_backend):
    """Train 4 steps on the CPU, save, load into a CUDA optimizer, go on: same as staying on CPU."""
    import io

    base = make_params([(4097,), (3, 5, 7), (1,)])
    grads = make_grads(base, 9)
    cpu_params = clone_params(base)
    cpu_opt = fusedlr.AdamW(cpu_params, lr=1e-2, max_grad_norm=1.0, schedule=schedules.WarmupCosine(2, 9),
                            backend="torch")  # fmt: skip
    run_steps(cpu_opt, cpu_params, grads[:4])
    buffer = io.BytesIO()
    torch.save(cpu_opt.state_dict(), buffer)
    buffer.seek(0)

    cuda_params = [p.detach().to(CUDA).requires_grad_() for p in cpu_params]
    cuda_opt = fusedlr.AdamW(cuda_params, lr=1e-2, max_grad_norm=1.0, schedule=schedules.WarmupCosine(2, 9),
                             backend=kernel_backend)  # fmt: skip
    cuda_opt.load_state_dict(torch.load(buffer, weights_only=True))
    assert all(s["step"].device.type == "cuda" for s in cuda_opt.state.values())
    run_steps(cuda_opt, cuda_params, [[g.to(CUDA) for g in step] for step in grads[4:]])
    run_steps(cpu_opt, cpu_params, grads[4:])
    for p, q in zip(cuda_params, cpu_params):
        torch.testing.assert_close(p.detach().cpu(), q.detach(), rtol=2e-5, atol=2e-6)


def test_state_left_on_another_device_is_refused_before_any_change(kernel_backend):
    params = make_params([(8,)], device=CUDA)
    opt = fusedlr.AdamW(params, backend=kernel_backend)
    params[0].grad = torch.ones_like(params[0])
    opt.step()
    opt.state[params[0]]["exp_avg"] = opt.state[params[0]]["exp_avg"].cpu()
    before = params[0].detach().clone()
    with pytest.raises(RuntimeError, match="state 'exp_avg' is on cpu"):
        opt.step()
    assert torch.equal(params[0].detach(), before)


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_low_precision_params_stay_within_twice_torchs_own_error(kernel_backend, dtype):
    """Same-dtype state; error against an fp64 run at most 2x torch's at that precision.

    (fp16 state with eps=1e-8 is ill-posed: torch's own fp16 AdamW gives NaN there.)"""
    base = make_params([(4097,), (300, 7)], device=CUDA, dtype=torch.float64)
    grads = make_grads(base, 10)

    def run(kind, dt):
        params = [p.detach().to(dt).requires_grad_() for p in base]
        steps = [[g.to(dt) for g in step] for step in grads]
        if kind == "fusedlr":
            opt = fusedlr.AdamW(params, lr=1e-2, max_grad_norm=1.0, backend=kernel_backend)
            run_steps(opt, params, steps)
        else:
            run_by_hand(lambda g: torch.optim.AdamW(g, lr=1e-2, foreach=False), params,
                        [dict(params=list(range(len(params))), lr=1e-2)], steps, max_grad_norm=1.0)  # fmt: skip
        return [p.detach().double() for p in params]

    exact = run("torch", torch.float64)
    ours, theirs = run("fusedlr", dtype), run("torch", dtype)
    for e, o, t in zip(exact, ours, theirs):
        assert (o - e).abs().max() <= 2 * (t - e).abs().max()


@pytest.mark.parametrize("cls", [fusedlr.AdamW, fusedlr.Lion])
def test_cuda_and_triton_backends_agree(cls):
    if "cuda" not in fusedlr.available_backends():
        pytest.skip("fusedlr._C is not built")
    base = make_params(SHAPES, device=CUDA)
    grads = make_grads(base, 12, scale=2.0)
    results = []
    for backend in ("triton", "cuda"):
        params = clone_params(base)
        opt = cls(params, lr=1e-3, max_grad_norm=1.0, agc_clip_factor=0.1, schedule=schedules.WarmupCosine(2, 10),
                  backend=backend)  # fmt: skip
        norms = run_steps(opt, params, grads)
        results.append((opt, params, torch.stack(norms)))
    assert_states_close(*results[0][:2], *results[1][:2])
    torch.testing.assert_close(results[0][2], results[1][2], rtol=1e-6, atol=0)


def test_cuda_graph_capture_and_replay_match_eager(kernel_backend):
    """Capture opt.step() (clip + schedule + update) after warm-up; replays equal eager steps."""
    base = make_params([(4097,), (3, 5, 7), (300, 257), (1,)], device=CUDA)
    grads = make_grads(base, 12, scale=3.0)
    schedule = schedules.WarmupCosine(3, 12, min_lr_ratio=0.1)

    eager = clone_params(base)
    eager_opt = fusedlr.AdamW(eager, lr=1e-2, max_grad_norm=1.0, schedule=schedule, backend=kernel_backend)
    eager_norms = run_steps(eager_opt, eager, grads)

    graphed = clone_params(base)
    opt = fusedlr.AdamW(graphed, lr=1e-2, max_grad_norm=1.0, schedule=schedule, backend=kernel_backend)
    for p, g in zip(graphed, grads[0]):
        p.grad = g.clone()  # static grad buffers, refilled before every replay
    graph = capture_step(opt)  # after an eager warm-up step: step 0
    captured_norm = opt.last_grad_norm
    norms = [None]
    for step_grads in grads[1:]:
        for p, g in zip(graphed, step_grads):
            p.grad.copy_(g)
        graph.replay()
        norms.append(captured_norm.clone())
    torch.cuda.synchronize()
    assert_states_close(opt, graphed, eager_opt, eager)
    torch.testing.assert_close(torch.stack(norms[1:]), torch.stack(eager_norms[1:]), rtol=1e-6, atol=0)
    assert int(opt.state_dict()["schedule_step"]) == 12
