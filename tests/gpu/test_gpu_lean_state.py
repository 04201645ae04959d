"""8-bit moments and split master weights on the GPU: the compiled Triton kernel and the CUDA
extension's kernels against the torch backend (the same arithmetic on the CPU) and against each
other, and a CUDA-graph replay against eager steps. Skipped without a GPU."""

import pytest
import torch
from helpers import (
    assert_runs_as_close_to_the_oracle,
    capture_step,
    make_grads,
    make_params,
    run_steps,
)

import fusedlr
from fusedlr import _quantized, schedules

pytestmark = pytest.mark.gpu
SHAPES = [(1,), (4097,), (300, 257), (70_000,), (64, 64)]
OPTIONS = {
    "int8": dict(state_dtype="int8"),
    "int8+master": dict(state_dtype="int8", master_weights=True),
    "int8+split": dict(state_dtype="int8", master_weights="split"),
    "split": dict(master_weights="split"),
}


def _make(kind, params, backend, **options):
    common = dict(lr=1e-2, weight_decay=0.1, max_grad_norm=1.0, schedule=schedules.WarmupCosine(2, 10))
    cls = fusedlr.Lion if kind == "lion" else fusedlr.AdamW
    return cls(params, **common, backend=backend, **options)


EXTRA_OPTIONS = {
    "int8+stochastic": dict(state_dtype="int8", stochastic_rounding=True),
    "split+amsgrad": dict(master_weights="split", amsgrad=True),
}


class _Trial:
    """One model's params and bf16 grads, and fp32 AdamW/LION (the torch backend, fp32 params
    and states, the same bf16-rounded start and grads) as the oracle every run is measured by:
    a run's distance is that of its weights to the oracle's, as a fraction of how far the oracle
    moved (tests/helpers.py). The lean options pay their precision there (8-bit moments about 1e-2,
    split master weights about 1e-3, bf16 params without a master copy about 0.2)."""

    def __init__(self, kind, steps=6, dtype=torch.bfloat16):
        self.kind, self.dtype = kind, dtype
        base = make_params(SHAPES, dtype=torch.float64)
        self.start = [p.detach().to(dtype) for p in base]
        self.grads = [[g.to(dtype) for g in step] for step in make_grads(base, steps, scale=2.0)]
        self.oracle = self.run("torch", "cpu", {}, start_dtype=torch.float32)[0]

    def run(self, backend, device, options, start_dtype=None):
        dtype = start_dtype or self.dtype
        params = [p.to(device, dtype, copy=True).requires_grad_() for p in self.start]
        opt = _make(self.kind, params, backend, **options)
        run_steps(opt, params, [[g.to(device, dtype) for g in step] for step in self.grads])
        return params, opt

    def assert_as_close(self, ours, opt, theirs, ref, what):
        assert_runs_as_close_to_the_oracle(ours, opt, theirs, ref, self.oracle, self.start, what)


def _assert_same_layout(opt, ref, params, ref_params):
    for p, q in zip(params, ref_params):
        assert p.dtype == q.dtype and opt.state[p].keys() == ref.state[q].keys()
        for name, value in ref.state[q].items():
            mine = opt.state[p][name]
            assert (mine.dtype, mine.shape) == (value.dtype, value.shape), name
            if name == "step":
                assert float(mine) == float(value)


@pytest.mark.parametrize("kind", ["adamw", "lion"])
@pytest.mark.parametrize("option", list(OPTIONS))
def test_kernels_on_the_gpu_are_as_close_to_fp32_as_the_torch_backend(kernel_backend, kind, option):
    """The torch backend holds the readable reference of the 8-bit codes and the split residuals;
    the kernels on the GPU must keep the same states and land as near fp32 training as it does.
    (Element by element they part: a code one unit off in a block's largest moment moves the
    block's scale and codes all over the block, and such a difference persists for steps.)"""
    trial = _Trial(kind)
    ref_params, ref = trial.run("torch", "cpu", OPTIONS[option])
    params, opt = trial.run(kernel_backend, "cuda", OPTIONS[option])
    _assert_same_layout(opt, ref, params, ref_params)
    trial.assert_as_close(params, opt, ref_params, ref, kernel_backend)


@pytest.mark.parametrize("kind", ["adamw", "lion"])
def test_captured_step_matches_eager_steps(kernel_backend, kind):
    base = make_params(SHAPES, dtype=torch.float64)
    grads = make_grads(base, 4)
    runs = []
    for captured in (False, True):
        params = [p.detach().to("cuda", torch.bfloat16).requires_grad_() for p in base]
        opt = _make(kind, params, kernel_backend, **OPTIONS["int8+split"])
        for p, g in zip(params, grads[0]):
            p.grad = g.to("cuda", torch.bfloat16)
        if captured:
            graph = capture_step(opt)  # the eager warm-up is step 0; capturing runs nothing
            for step in grads[1:]:
                for p, g in zip(params, step):
                    p.grad.copy_(g.to("cuda", torch.bfloat16))
                graph.replay()
        else:
            opt.step()
            run_steps(opt, params, [[g.to("cuda", torch.bfloat16) for g in step] for step in grads[1:]])
        torch.cuda.synchronize()
        runs.append([p.detach().clone() for p in params])
    for eager, replayed in zip(*runs):
        assert torch.equal(eager, replayed)


@pytest.mark.parametrize("kind", ["adamw", "lion"])
@pytest.mark.parametrize("option", [*OPTIONS, *EXTRA_OPTIONS, "int8-fp32"])
def test_cuda_matches_triton_on_the_gpu(kind, option):
    """The two kernel backends on the same CUDA tensors keep the same states and land equally
    near fp32 training (stochastic rounding: the same bits drawn; fp32 params: 8-bit moments alone)."""
    if "cuda" not in fusedlr.available_backends():
        pytest.skip("the CUDA extension is not built")
    options = {**OPTIONS, **EXTRA_OPTIONS}.get(option, dict(state_dtype="int8"))
    if kind == "lion" and "amsgrad" in options:
        pytest.skip("amsgrad is AdamW's")
    trial = _Trial(kind, dtype=torch.float32 if option == "int8-fp32" else torch.bfloat16)
    ref_params, ref = trial.run("triton", "cuda", options)
    params, opt = trial.run("cuda", "cuda", options)
    _assert_same_layout(opt, ref, params, ref_params)
    trial.assert_as_close(params, opt, ref_params, ref, "cuda vs triton")


@pytest.mark.parametrize(
    "kind, options",
    [("adamw", OPTIONS["int8+split"]), ("lion", OPTIONS["int8+split"]), ("adamw", OPTIONS["split"]),
     ("sgd", dict(master_weights=True, momentum=0.9)), ("schedulefree", dict(master_weights=True))],
    ids=["adamw-int8+split", "lion-int8+split", "adamw-split", "sgd-master", "schedulefree-master"],
)  # fmt: skip
def test_more_chunks_than_the_grid_takes_a_second_turn(kernel_backend, kind, options):
    """1,200 tensors of 4,096 elements: one chunk each, more chunks than the update kernels' grid
    (8 blocks per SM, 1,056 on a 132-SM GPU), so the grid-stride loops of the quantized and
    mixed-precision kernels take a second turn. The last tensors must be updated like the first."""
    shapes = [(4096,)] * 1200
    base = make_params(shapes, dtype=torch.float64)
    grads = [[g.to(torch.bfloat16) for g in step] for step in make_grads(base, 3, scale=2.0)]
    common = dict(lr=1e-2, weight_decay=0.1)  # no clip: every rule moves most bf16 weights
    cls = {"adamw": fusedlr.AdamW, "lion": fusedlr.Lion, "sgd": fusedlr.SGD,
           "schedulefree": fusedlr.AdamWScheduleFree}[kind]  # fmt: skip
    runs = []
    for backend, device in (("torch", "cpu"), (kernel_backend, "cuda")):
        params = [p.detach().to(device, torch.bfloat16).requires_grad_() for p in base]
        opt = cls(params, **common, backend=backend, **options)
        if kind == "schedulefree":
            opt.train()
        run_steps(opt, params, [[g.to(device) for g in step] for step in grads])
        runs.append(params)
    ref, ours = runs
    assert len(ours) > 8 * torch.cuda.get_device_properties(0).multi_processor_count
    for i in (0, len(ours) // 2, len(ours) - 1):
        moved = ours[i].detach().cpu() != base[i].to(torch.bfloat16)
        assert moved.float().mean() > 0.5, f"tensor {i} was not updated"
        assert (ours[i].detach().cpu() != ref[i].detach()).float().mean() < 0.01, f"tensor {i}"


def test_8bit_split_tensor_over_two_billion_elements(kernel_backend):
    """int64 block and element offsets of the quantized kernel (review finding): the last blocks
    of a (2**31 + 4099)-element bf16 tensor with 8-bit moments and a split master end as the same
    blocks do in a tensor of their own (no clip, so each 256-element block's update depends on
    its own elements only). About 15 GB of GPU memory."""
    if torch.cuda.mem_get_info()[0] < 20 * 2**30:
        pytest.skip("needs about 20 GB of free GPU memory")
    numel = 2**31 + 4099
    start = (numel // _quantized.QUANT_BLOCK - 16) * _quantized.QUANT_BLOCK  # 16 blocks and the partial one
    param = torch.zeros(numel, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    tail = slice(start, numel)
    param.data[tail] = torch.linspace(-1, 1, numel - start, device="cuda")
    param.grad = torch.zeros_like(param)
    param.grad[tail] = torch.linspace(2, -3, numel - start, device="cuda")
    alone = param.detach()[tail].clone().requires_grad_()
    alone.grad = param.grad[tail].clone()
    assert alone.numel() >= _quantized.MIN_QUANTIZED_NUMEL
    options = dict(lr=1e-2, weight_decay=0.1, backend=kernel_backend, **OPTIONS["int8+split"])
    big, small = fusedlr.AdamW([param], **options), fusedlr.AdamW([alone], **options)
    for _ in range(2):
        big.step()
        small.step()
    torch.testing.assert_close(param.detach()[tail], alone.detach(), rtol=0, atol=0)
    first_block = start // _quantized.QUANT_BLOCK
    for name, value in small.state[alone].items():
        mine = big.state[param][name]
        if name.endswith("_scales"):
            mine = mine.reshape(-1)[first_block:]
        elif name != "step":
            mine = mine.reshape(-1)[tail]
        assert torch.equal(mine, value), name


@pytest.mark.parametrize("kind", ["adamw", "lion"])
def test_a_nan_gradient_poisons_its_moments_block_on_the_gpu(kernel_backend, kind):
    """As tests/test_int8_states.py on the CPU, where the Triton interpreter's tl.max keeps NaNs
    and cannot tell: on a GPU tl.max skips them, so the kernel takes the block max NaN-aware."""
    param = torch.linspace(-1, 1, 600, device="cuda").requires_grad_()
    cls = fusedlr.Lion if kind == "lion" else fusedlr.AdamW  # no clip: a NaN norm would poison every block
    opt = cls([param], lr=1e-3, state_dtype="int8", backend=kernel_backend)
    param.grad = torch.linspace(1, -2, 600, device="cuda")
    opt.step()
    param.grad = torch.linspace(-1, 3, 600, device="cuda")
    param.grad[300] = float("nan")
    opt.step()
    blocks = torch.arange(600, device="cuda") // _quantized.QUANT_BLOCK
    for name, moment in _quantized.decoded_moments(opt.state[param]).items():
        assert moment[blocks == 1].isnan().all(), name
        assert moment[blocks != 1].isfinite().all(), name
