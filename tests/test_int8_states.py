"""8-bit moments (``state_dtype="int8"``): the quantisation's error bounds, the Triton kernel
against the torch backend's reference (bit for bit where the inputs are exact), AdamW and LION
against their fp32 references, state dicts and conversions, and the refusals.
"""

import io
import os

import pytest
import torch
from helpers import assert_same_storage, make_grads, make_params, run_steps
from lion_pytorch import Lion as ReferenceLion

import fusedlr
from fusedlr import _quantized, _split_master

SHAPES = [(64, 100), (4097,), (30, 7), "transposed-big", (3, 50, 40)]


def _params(dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for shape in SHAPES:
        if shape == "transposed-big":  # dense, not contiguous: blocks follow memory order
            t = torch.randn(90, 70, generator=gen).t()
        else:
            t = torch.randn(shape, generator=gen)
        out.append(t.to(dtype).requires_grad_())
    return out


def _clone(params):
    return [p.detach().clone(memory_format=torch.preserve_format).requires_grad_() for p in params]


# ----- the quantisation itself ------------------------------------------------------------


def test_signed_roundtrip_error_is_within_one_127th_of_the_block_scale():
    x = torch.randn(10_000) * torch.logspace(-6, 0, 10_000)  # magnitudes spread within blocks
    codes, scale = _quantized.quantize_signed(x)
    assert codes.dtype == torch.int8 and scale.shape == (_quantized.num_blocks(x.numel()),)
    back = _quantized.dequantize_signed(codes, scale)
    block_scale = scale[torch.arange(x.numel()) // _quantized.QUANT_BLOCK]
    assert torch.equal(block_scale, torch.stack([b.abs().max() for b in x.split(256)]).repeat_interleave(256)[:10_000])
    assert ((back - x).abs() <= block_scale / 127 * (1 + 1e-5)).all()
    # Companding spends codes near zero: there the decoding's slope is 1/2, not 2, so small values
    # of a block are kept four times better (half a code step of 1/127, times 1/2).
    small = x.abs() < 0.01 * block_scale
    assert ((back - x).abs()[small] <= block_scale[small] / 480).all()


def test_unsigned_roundtrip_error_is_within_one_255th_of_the_block_maximum():
    v = torch.rand(10_000).square() * torch.logspace(-8, 0, 10_000)
    codes, scale = _quantized.quantize_unsigned(v)
    assert codes.dtype == torch.uint8
    back = _quantized.dequantize_unsigned(codes, scale)
    block_max = torch.stack([b.max() for b in v.split(256)]).repeat_interleave(256)[:10_000]
    assert torch.allclose(scale.square().repeat_interleave(256)[:10_000], block_max, rtol=1e-6)
    assert ((back - v).abs() <= block_max / 255 * (1 + 1e-5)).all()
    assert (back >= 0).all()


def test_zero_blocks_and_exact_extremes_survive():
    x = torch.zeros(600)
    x[300] = -2.5
    codes, scale = _quantized.quantize_signed(x)
    assert scale[0] == 0 and (codes[:256] == 0).all()
    back = _quantized.dequantize_signed(codes, scale)
    assert back[300] == -2.5 and (back[:300] == 0).all() and (back[301:] == 0).all()


def test_companding_beats_the_dynamic_map_on_trained_moments():
    """The choice of map, measured (README, "8-bit moments"): on a trained model's moments the
    companding's error is below bitsandbytes' dynamic map's, for m, v and the Adam direction."""
    pytest.importorskip("bitsandbytes")
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
    import quantization_error as study

    moments = study.trained_moments(25)
    ours, theirs = study.errors(moments, study.companded), study.errors(moments, study.dynamic_map)
    for name in ("m", "v", "direction"):
        assert ours[name] < theirs[name], (name, ours, theirs)


# ----- the update ---------------------------------------------------------------------------


def _exact_grads(params, steps, seed=1):
    """Grads k/64 (|k| <= 64): their squares, halves and the lerps below are exact in float32."""
    gen = torch.Generator().manual_seed(seed)
    return [
        [torch.empty_like(p).copy_(torch.randint(-64, 65, p.shape, generator=gen).float() / 64) for p in params]
        for _ in range(steps)
    ]


def test_kernels_encode_and_decode_bit_for_bit_as_the_reference(monkeypatch, kernel_backend):
    """Inputs on which both backends' AdamW arithmetic is exact (lr 0, betas 0.5, grads k/64, then
    zero grads that halve the moments): any difference left is the quantisation's. The codes and
    scales must then be identical, step after step (a decode one ulp off changes the scales)."""
    import fusedlr._triton as launcher

    monkeypatch.setattr(launcher, "BLOCK", 256)  # unmasked full blocks and masked tails
    base = _params()
    grads = _exact_grads(base, 2)
    grads += [[torch.zeros_like(p) for p in base]] * 3
    states = []
    for backend in ("torch", kernel_backend):
        params = _clone(base)
        opt = fusedlr.AdamW(params, lr=0.0, betas=(0.5, 0.5), weight_decay=0.0, state_dtype="int8", backend=backend)
        run_steps(opt, params, grads)
        states.append([opt.state[p] for p in params])
    for ours, theirs in zip(states[1], states[0]):
        assert ours.keys() == theirs.keys()
        for name in ours:
            assert torch.equal(ours[name], theirs[name]), name


@pytest.mark.parametrize("kind", ["adamw", "lion"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernels_match_the_torch_backend(kernel_backend, kind, dtype):
    """Clipped, scheduled steps: the backends differ in the last bits of the AdamW arithmetic
    (the norm's summation order), which can move a code by one step, rarely."""
    base = _params(dtype)
    grads = make_grads(base, 5, scale=2.0)
    runs = []
    for backend in ("torch", kernel_backend):
        params = _clone(base)
        options = dict(lr=1e-2, weight_decay=0.1, max_grad_norm=1.0, state_dtype="int8", backend=backend)
        options["schedule"] = fusedlr.schedules.WarmupCosine(2, 10)
        if dtype == torch.bfloat16:
            options["master_weights"] = True
        opt = fusedlr.Lion(params, **options) if kind == "lion" else fusedlr.AdamW(params, **options)
        run_steps(opt, params, grads)
        runs.append((params, opt))
    _assert_near_the_reference(runs[1], runs[0])


def _assert_near_the_reference(kernel_run, reference_run, param_rtol=0.0):
    """A kernel backend's ``(params, opt)`` after the same steps as the torch backend's: params
    within a fraction of lr = 1e-2, codes and residuals off by one unit in rare elements."""
    (ours, opt), (theirs, ref) = kernel_run, reference_run
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p.float(), q.float(), rtol=param_rtol, atol=1e-2 * 2**-6)
        assert opt.state[p].keys() == ref.state[q].keys()
        for name, value in ref.state[q].items():
            mine = opt.state[p][name]
            if name in _quantized.CODE_KEYS or name == "master_residual":
                off = (mine.int() - value.int()).abs()
                assert off.max() <= 1 and (off > 0).float().mean() < 0.01, name
            elif name == "master_param":  # a code one off moves its weight as it moves the param
                torch.testing.assert_close(mine, value, rtol=1e-3, atol=1e-2 * 2**-6)
            elif value.dtype in (torch.bfloat16, torch.float16):  # one unit, rarely
                assert_same_storage(mine, value, atol=1e-7)
            elif name != "step":
                torch.testing.assert_close(mine, value, rtol=1e-3, atol=1e-7)


# Storage variants of the lean options, each with its own bucket kind in the kernels.
LEAN_VARIANTS = {
    "int8-bf16": (torch.bfloat16, dict(state_dtype="int8")),
    "int8-bf16+stochastic": (torch.bfloat16, dict(state_dtype="int8", stochastic_rounding=True, seed=5)),
    "int8-fp16+master": (torch.float16, dict(state_dtype="int8", master_weights=True)),
    "int8-fp16": (torch.float16, dict(state_dtype="int8")),
    "split+amsgrad": (torch.bfloat16, dict(master_weights="split", amsgrad=True)),
    "split+bf16-states": (torch.bfloat16, dict(master_weights="split", state_dtype=torch.bfloat16)),
}


@pytest.mark.parametrize("kind", ["adamw", "lion"])
@pytest.mark.parametrize("variant", list(LEAN_VARIANTS))
def test_lean_storage_variants_match_the_torch_backend(kernel_backend, kind, variant):
    """Every storage the kernels specialise 8-bit moments and split masters on (low-precision
    params without a master, stochastic rounding, fp16 masters, amsgrad, bf16 moments)."""
    dtype, options = LEAN_VARIANTS[variant]
    if kind == "lion" and options.get("amsgrad"):
        pytest.skip("amsgrad is AdamW's")
    base = _params(dtype)
    grads = make_grads(base, 4, scale=2.0)
    runs = []
    for backend in ("torch", kernel_backend):
        params = _clone(base)
        common = dict(lr=1e-2, weight_decay=0.1, max_grad_norm=1.0, backend=backend, **options)
        opt = fusedlr.Lion(params, **common) if kind == "lion" else fusedlr.AdamW(params, **common)
        run_steps(opt, params, grads)
        runs.append((params, opt))
    # Low-precision params: a rounding may differ by one unit where the clip's last bits do.
    _assert_near_the_reference(runs[1], runs[0], param_rtol=2**-7)


def test_adamw_int8_follows_fp32_adamw(backend):
    """20 steps against torch.optim.AdamW with fp32 moments: the 8-bit moments move the params
    by a small fraction of the distance the updates travel (lr per step)."""
    base = _params()
    grads = make_grads(base, 20)
    params, reference = _clone(base), _clone(base)
    opt = fusedlr.AdamW(params, lr=1e-2, weight_decay=0.1, state_dtype="int8", backend=backend)
    ref = torch.optim.AdamW(reference, lr=1e-2, weight_decay=0.1, foreach=False)
    run_steps(opt, params, grads)
    run_steps(ref, reference, grads)
    travel = 1e-2 * 20
    for p, q in zip(params, reference):
        gap = (p.detach() - q.detach()).abs()
        assert gap.mean() < 0.01 * travel and gap.max() < 0.05 * travel
    assert "exp_avg" in opt.state[params[2]]  # 210 elements: below MIN_QUANTIZED_NUMEL, fp32
    assert opt.state[params[2]]["exp_avg"].dtype == torch.float32
    assert opt.state[params[0]]["exp_avg_codes"].dtype == torch.int8
    assert opt.state[params[0]]["exp_avg_sq_codes"].dtype == torch.uint8


def test_lion_int8_follows_the_lion_reference(backend):
    base = _params()
    grads = make_grads(base, 20)
    params, reference = _clone(base), _clone(base)
    opt = fusedlr.Lion(params, lr=1e-3, weight_decay=0.1, state_dtype="int8", backend=backend)
    ref = ReferenceLion(reference, lr=1e-3, weight_decay=0.1)
    run_steps(opt, params, grads)
    run_steps(ref, reference, grads)
    for p, q in zip(params, reference):
        # A sign flips only where b1*m + (1-b1)*g sits within a quantisation step of zero.
        gap = (p.detach() - q.detach()).abs()
        assert (gap > 1e-6).float().mean() < 0.05
        assert gap.max() <= 2 * 1e-3 * 20 * 1.01  # a flipped sign moves a param by 2 lr per step


def _one_gradient_beside_a_large_one(backend, kind, ratio, after_steps, flipping=False, **options):
    """A 4,096-element param whose element 0 gets a gradient of 1 at every step (of alternating
    sign where ``flipping``) and element 1 one gradient of ``ratio`` (at step 5), then zeros:
    element 1's trajectory from step 5 on and the state."""
    param = torch.nn.Parameter(torch.zeros(4096))
    opt = getattr(fusedlr, kind)([param], lr=1e-3, weight_decay=0.0, state_dtype="int8", backend=backend, **options)
    trajectory = []
    for step in range(6 + after_steps):
        grad = torch.zeros(4096)
        grad[0] = -1.0 if flipping and step % 2 else 1.0
        if step == 5:
            grad[1] = ratio
        param.grad = grad
        opt.step()
        trajectory.append(param[1].item())
    return torch.tensor(trajectory[5:]), opt.state[param]


@pytest.mark.parametrize("ratio", [0.002, 0.004])
def test_a_small_second_moment_is_never_decoded_as_zero(backend, ratio):
    """One small gradient in a block whose largest element's gradient flips sign (its m stays
    small, its v grows): element 1's sqrt(v) is under half a code of the block maximum, its m
    over half a code. Rounded to 0, v made the update m / eps: the weight jumped by 17 to 150
    (17,000 to 150,000 lr). AdamW's update is at most about 7 lr a step (|m| <= 7.3 sqrt(v) for
    betas 0.9, 0.999)."""
    trajectory, state = _one_gradient_beside_a_large_one(backend, "AdamW", ratio, after_steps=8, flipping=True)
    assert state["exp_avg_sq_codes"][1] >= 1
    assert trajectory.diff().abs().max() <= 8e-3 and trajectory.abs().max() <= 25e-3


def test_a_first_moment_whose_gradients_stopped_decays_to_zero(backend):
    """Rounded to nearest, exp_avg's code c came back as itself once floor(0.9 c + 0.5) == c
    (c <= 5): the weight kept moving forever, faster as v decayed. Rounded toward zero while its
    gradient is zero, the code reaches 0 and the weight stops, as with fp32 moments (whose m is
    1e-3 of where it started after 70 steps)."""
    trajectory, state = _one_gradient_beside_a_large_one(backend, "AdamW", 0.3, after_steps=70)
    assert state["exp_avg_codes"][1] == 0
    assert torch.equal(trajectory[-10:], trajectory[-1].expand(10))


@pytest.mark.parametrize("state_dtype", [None, "int8"])
def test_a_checkpoint_from_another_memory_layout_is_laid_out_as_the_param(backend, state_dtype):
    """Saved beside a channels_last conv weight, loaded beside a contiguous one (and the reverse):
    the states are laid out as the param (the kernel backends refused every later step before);
    float32 moments are copied exactly, 8-bit ones re-encoded in the new blocks (one quantisation)."""
    weight = torch.randn(32, 16, 3, 3, generator=torch.Generator().manual_seed(0))
    grads = [torch.randn(32, 16, 3, 3, generator=torch.Generator().manual_seed(i)) for i in range(1, 5)]
    layouts = (torch.channels_last, torch.contiguous_format)
    for saved, loaded in (layouts, layouts[::-1]):
        runs = []
        for layout in (saved, loaded):
            param = torch.nn.Parameter(weight.clone().contiguous(memory_format=layout))
            runs.append((param, fusedlr.AdamW([param], lr=1e-2, state_dtype=state_dtype, backend=backend), layout))
        (first, first_opt, _), (second, second_opt, _) = runs
        for grad in grads[:2]:
            first.grad = grad.contiguous(memory_format=saved)
            first_opt.step()
        buffer = io.BytesIO()
        torch.save(first_opt.state_dict(), buffer)
        buffer.seek(0)
        with torch.no_grad():
            second.copy_(first)
        second_opt.load_state_dict(torch.load(buffer, weights_only=True))
        state = second_opt.state[second]
        for value in state.values():
            if value.shape == second.shape:
                assert value.stride() == second.stride()
        for param, opt, layout in runs:
            for grad in grads[2:]:
                param.grad = grad.contiguous(memory_format=layout)
                opt.step()
        if state_dtype is None:
            assert torch.equal(first, second)
        else:  # one re-encoding of the moments: the next steps differ by a small part of lr
            assert (first - second).abs().max() < 0.2 * 1e-2


def test_int8_state_bytes():
    p = torch.zeros(4096 * 4, requires_grad=True)
    p.grad = torch.ones_like(p)
    opt = fusedlr.AdamW([p], state_dtype="int8", backend="torch")
    opt.step()
    moment_bytes = sum(v.numel() * v.element_size() for k, v in opt.state[p].items() if k != "step")
    assert moment_bytes == p.numel() * (2 + 2 * 4 / _quantized.QUANT_BLOCK)


# ----- state dicts --------------------------------------------------------------------------


def _roundtrip(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_dict_resumes_bit_for_bit(backend, dtype):
    base = _params(dtype)
    grads = make_grads(base, 6)
    options = dict(lr=1e-2, state_dtype="int8", backend=backend, master_weights=dtype == torch.bfloat16)
    straight = _clone(base)
    opt = fusedlr.AdamW(straight, **options)
    run_steps(opt, straight, grads)

    first = _clone(base)
    opt_a = fusedlr.AdamW(first, **options)
    run_steps(opt_a, first, grads[:3])
    saved = _roundtrip(opt_a.state_dict())
    resumed = [p.detach().clone(memory_format=torch.preserve_format).requires_grad_() for p in first]
    opt_b = fusedlr.AdamW(resumed, **options)
    opt_b.load_state_dict(saved)
    for p, q in zip(first, resumed):
        for name, value in opt_a.state[p].items():
            assert opt_b.state[q][name].dtype == value.dtype and torch.equal(opt_b.state[q][name], value), name
    run_steps(opt_b, resumed, grads[3:])
    for p, q in zip(straight, resumed):
        assert torch.equal(p.detach(), q.detach())
        for name, value in opt.state[p].items():
            assert torch.equal(opt_b.state[q][name], value), name


def test_fp32_checkpoint_into_int8_and_back_converts_with_one_quantisation(backend):
    """A torch.optim.AdamW checkpoint loads into an 8-bit optimizer (moments quantised on load,
    error within the documented bound), and an 8-bit checkpoint into an fp32 optimizer (moments
    decoded exactly)."""
    base = _params()
    grads = make_grads(base, 3)
    ref_params = _clone(base)
    ref = torch.optim.AdamW(ref_params, lr=1e-2)
    run_steps(ref, ref_params, grads)
    saved = _roundtrip(ref.state_dict())

    params = _clone(base)
    opt = fusedlr.AdamW(params, lr=1e-2, state_dtype="int8", backend=backend)
    opt.load_state_dict(saved)
    for p, q in zip(params, ref_params):
        state, exact = opt.state[p], ref.state[q]
        if p.numel() < _quantized.MIN_QUANTIZED_NUMEL:
            assert torch.equal(state["exp_avg"], exact["exp_avg"])
            continue
        m = _quantized.decode(state["exp_avg_codes"], state["exp_avg_scales"], signed=True)
        v = _quantized.decode(state["exp_avg_sq_codes"], state["exp_avg_sq_scales"], signed=False)
        assert (m - exact["exp_avg"]).abs().max() <= exact["exp_avg"].abs().max() / 127 * (1 + 1e-5)
        assert (v - exact["exp_avg_sq"]).abs().max() <= exact["exp_avg_sq"].max() / 255 * (1 + 1e-5)

    # Back: the loading optimizer's own state_dtype is kept (the checkpoint's groups say
    # "int8"): the moments are decoded into float32 on load, exactly.
    saved = _roundtrip(opt.state_dict())
    back_params = _clone(params)
    back = fusedlr.AdamW(back_params, lr=1e-2, backend=backend)
    back.load_state_dict(saved)
    assert back.param_groups[0]["state_dtype"] is None
    assert not any(_quantized.is_quantized(state) for state in back.state.values())
    # The independent reference: torch's AdamW from the decoded moments.
    oracle_params = _clone(params)
    oracle = torch.optim.AdamW(oracle_params, lr=1e-2, foreach=False)
    oracle.load_state_dict(ref.state_dict())
    for p, q in zip(oracle_params, params):
        state = opt.state[q]
        for moment, (codes, scales, signed) in _quantized.QUANTIZED_KEYS.items():
            if codes in state:
                oracle.state[p][moment] = _quantized.decode(state[codes], state[scales], signed)
    step = make_grads(base, 1, seed=9)
    run_steps(back, back_params, step)
    run_steps(oracle, oracle_params, step)
    for p, q in zip(back_params, oracle_params):
        assert back.state[p].keys() == {"step", "exp_avg", "exp_avg_sq"}
        torch.testing.assert_close(p.detach(), q.detach(), rtol=2e-5, atol=2e-6)
        torch.testing.assert_close(back.state[p]["exp_avg"], oracle.state[q]["exp_avg"], rtol=2e-5, atol=1e-7)


def test_turning_int8_on_and_off_between_steps(backend):
    params = _params()
    grads = make_grads(params, 4)
    opt = fusedlr.AdamW(params, lr=1e-2, backend=backend)
    run_steps(opt, params, grads[:2])
    opt.param_groups[0]["state_dtype"] = "int8"
    run_steps(opt, params, grads[2:3])
    assert "exp_avg_codes" in opt.state[params[0]] and "exp_avg" not in opt.state[params[0]]
    opt.param_groups[0]["state_dtype"] = None
    run_steps(opt, params, grads[3:])
    assert "exp_avg" in opt.state[params[0]] and "exp_avg_codes" not in opt.state[params[0]]


# ----- refusals -------------------------------------------------------------------------------


def test_amsgrad_with_int8_is_a_value_error():
    with pytest.raises(ValueError, match="amsgrad"):
        fusedlr.AdamW(make_params([(5,)]), amsgrad=True, state_dtype="int8")
    with pytest.raises(ValueError, match="Invalid state_dtype"):
        fusedlr.AdamW(make_params([(5,)]), state_dtype="int4")


def test_sharded_params_are_refused_clearly():
    groups = [dict(state_dtype="int8")]
    _quantized.check_step(groups, sharded=False)  # every backend quantises (cuda included)
    with pytest.raises(RuntimeError, match="DTensor"):
        _quantized.check_step(groups, sharded=True)
    _quantized.check_step([dict(state_dtype=None)], sharded=True)  # not asked: no error


def test_corrupt_quantised_state_fails_before_any_change(backend):
    params = _params()
    grads = make_grads(params, 2)
    opt = fusedlr.AdamW(params, lr=1e-2, state_dtype="int8", backend=backend)
    run_steps(opt, params, grads[:1])
    opt.state[params[3]]["exp_avg_scales"] = torch.zeros(3)  # wrong number of blocks
    before = [p.detach().clone() for p in params]
    states = [{k: v.clone() for k, v in opt.state[p].items()} for p in params]
    with pytest.raises(RuntimeError, match="exp_avg_scales"):
        run_steps(opt, params, grads[1:])
    assert all(torch.equal(p.detach(), b) for p, b in zip(params, before))
    for p, saved in zip(params, states):
        assert all(torch.equal(opt.state[p][k], v) for k, v in saved.items())


_DTENSOR_SCRIPT = """
import torch, torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor
import fusedlr
dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
mesh = init_device_mesh("cpu", (1,))
for options in (dict(state_dtype="int8"), dict(master_weights="split")):
    dtype = torch.bfloat16 if "master_weights" in options else torch.float32
    p = torch.nn.Parameter(distribute_tensor(torch.randn(64, 80, dtype=dtype), mesh, [Shard(0)]))
    p.grad = distribute_tensor(torch.randn(64, 80, dtype=dtype), mesh, [Shard(0)])
    before = p.detach().full_tensor().clone()
    try:
        fusedlr.AdamW([p], backend="torch", **options)
    except RuntimeError as error:
        assert "DTensor" in str(error), error
    else:
        raise AssertionError("not refused when the optimizer is made")
    opt = fusedlr.AdamW([p], backend="torch")
    opt.param_groups[0].update(options)  # set by hand afterwards: refused at the step
    try:
        opt.step()
    except RuntimeError as error:
        assert "DTensor" in str(error), error
        assert torch.equal(p.detach().full_tensor(), before) and not opt.state
    else:
        raise AssertionError("no error")
print("refused")
"""


def test_dtensor_params_are_refused_before_any_change():
    """FSDP2's DTensor params: 8-bit moments and split masters refuse them (README, "Byte
    model") when the optimizer is made, and at a step where a group was changed by hand,
    before anything is modified. One process, a world of one, in a subprocess."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _DTENSOR_SCRIPT], capture_output=True, text=True, timeout=120,
                         cwd=os.path.join(os.path.dirname(__file__), ".."))  # fmt: skip
    assert out.returncode == 0 and "refused" in out.stdout, out.stderr[-2000:]


def test_a_checkpoint_loads_in_the_loading_optimizers_storage_options(backend):
    """fusedlr's own float32-state (and fp32-master) checkpoint loaded into an 8-bit,
    split-master optimizer is stored as that optimizer asks: quantised on load, a residual from
    the master copy; the loaded groups keep the loader's storage options."""
    base = [torch.randn(64, 80, dtype=torch.bfloat16), torch.randn(80, dtype=torch.bfloat16)]
    grads = make_grads(base, 2)
    params = _clone(base)
    full = fusedlr.AdamW(params, lr=1e-2, master_weights=True, backend=backend)
    run_steps(full, params, grads)
    saved = _roundtrip(full.state_dict())
    lean_params = _clone(params)
    lean = fusedlr.AdamW(lean_params, lr=1e-2, master_weights="split", state_dtype="int8", backend=backend)
    lean.load_state_dict(saved)
    assert lean.param_groups[0]["state_dtype"] == "int8" and lean.param_groups[0]["master_weights"] == "split"
    big = lean.state[lean_params[0]]
    assert {"exp_avg_codes", "exp_avg_sq_codes"} <= big.keys() and "exp_avg" not in big
    run_steps(lean, lean_params, make_grads(base, 1, seed=4))
    assert _split_master.RESIDUAL_KEY in lean.state[lean_params[0]]
    assert "master_param" not in lean.state[lean_params[0]]


@pytest.mark.parametrize(
    "make",
    [
        lambda ps, b: fusedlr.AdamW(ps, lr=1e-2, master_weights="split", state_dtype="int8", backend=b),
        lambda ps, b: fusedlr.AdamW(
            ps, lr=1e-2, master_weights=True, state_dtype="int8", max_grad_norm=0.1, agc_clip_factor=0.05, backend=b
        ),  # fmt: skip
        lambda ps, b: fusedlr.Lion(ps, lr=1e-3, state_dtype="int8", weight_decay=0.1, backend=b),
        lambda ps, b: fusedlr.SGD(ps, lr=1e-2, momentum=0.9, nesterov=True, master_weights=True, backend=b),
        lambda ps, b: fusedlr.AdamWScheduleFree(ps, lr=1e-2, warmup_steps=2, master_weights=True, backend=b),
    ],
    ids=["adamw-split-int8", "adamw-master-int8", "lion-int8", "sgd-master", "schedulefree-master"],
)
@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_large_tensors_update_slice_by_slice_with_the_same_bits(monkeypatch, backend, make):
    """The reference updates a large contiguous tensor's float32 copies slice by slice (and
    converts 8-bit moments and sums the norms' squares slice by slice), so that a step's
    transient memory stays small: the bits are those of the whole-tensor update, step counters
    advanced once."""
    from fusedlr import reference

    shapes = [(40, 130), (4099,), (7,)]  # slices of 1,024 cut blocks and rows; a partial last block
    base = [torch.randn(shape, dtype=torch.bfloat16) for shape in shapes]
    grads = make_grads(base, 3)
    results = []
    for slice_numel in (1 << 30, 1024):
        monkeypatch.setattr(reference, "FP32_SLICE", slice_numel)
        monkeypatch.setattr(_quantized, "CONVERT_SLICE", slice_numel)
        params = _clone(base)
        opt = make(params, backend)
        if hasattr(opt, "train"):
            opt.train()
        run_steps(opt, params, grads)
        results.append((params, opt))
    (whole, whole_opt), (sliced, sliced_opt) = results
    for p, q in zip(whole, sliced):
        assert torch.equal(p.detach(), q.detach())
        for name, value in whole_opt.state[p].items():
            assert torch.equal(sliced_opt.state[q][name], value), name


@pytest.mark.parametrize("kind", ["AdamW", "Lion"])
def test_a_nan_gradient_poisons_its_moments_block_visibly_on_every_backend(backend, kind):
    """A NaN gradient that reaches the update (no skip_nonfinite, no GradScaler) makes its
    block's scale NaN, so every moment of that block decodes as NaN on every backend (Triton's
    tl.max skips NaNs: its block kept a finite scale and a code cast from NaN), and only that
    block: the others decode as before. (The interpreter's tl.max keeps NaNs, so on the CPU this
    checks torch, cpu and the CUDA kernel's host twin; tests/gpu runs it on a GPU.)"""
    param = torch.nn.Parameter(torch.linspace(-1, 1, 600))
    opt = getattr(fusedlr, kind)([param], lr=1e-3, state_dtype="int8", backend=backend)
    param.grad = torch.linspace(1, -2, 600)
    opt.step()
    grad = torch.linspace(-1, 3, 600)
    grad[300] = float("nan")
    param.grad = grad
    opt.step()
    blocks = torch.arange(600) // _quantized.QUANT_BLOCK
    for name, moment in _quantized.decoded_moments(opt.state[param]).items():
        assert moment[blocks == 1].isnan().all(), name
        assert moment[blocks != 1].isfinite().all(), name
    assert param[blocks != 1].isfinite().all()
    assert param[300].isnan() == (kind == "AdamW")  # torch.sign(NaN) is 0: LION skips it, as lion-pytorch


def test_a_gradient_clipped_to_zero_counts_as_zero_on_every_kernel(kernel_backend):
    """AdamW's exp_avg is rounded toward zero where the gradient the update used is zero: a tiny
    raw gradient that the clip factor underflows to 0 counts as zero on the kernels as in the
    reference (the CUDA kernel once took the raw gradient: 1,582 of 4,096 codes one apart)."""
    runs = []
    for backend in ("torch", kernel_backend):
        gen = torch.Generator().manual_seed(0)
        param = torch.nn.Parameter(torch.zeros(4096))
        opt = fusedlr.AdamW([param], lr=1e-3, weight_decay=0.0, state_dtype="int8", max_grad_norm=1.0, backend=backend)
        param.grad = torch.randn(4096, generator=gen) * 1e-3  # norm under 1: not clipped
        opt.step()
        grad = torch.full((4096,), 1e-30)
        grad[::256] = 1e17  # clip factor 1e-17 / 4: the 1e-30s become 0
        param.grad = grad
        opt.step()
        runs.append(opt.state[param]["exp_avg_codes"])
    assert torch.equal(runs[1], runs[0])


@pytest.mark.parametrize("kind", ["AdamW", "Lion"])
def test_kernels_round_as_the_reference_where_some_gradients_are_zero(monkeypatch, kernel_backend, kind):
    """As the bit-for-bit test above, with steps where half the elements of each block have a zero
    gradient and the others not, so the block scales change under the zero-gradient elements:
    AdamW rounds those toward zero, LION to nearest, and the codes must be the reference's."""
    import fusedlr._triton as launcher

    monkeypatch.setattr(launcher, "BLOCK", 256)
    base = _params()
    gen = torch.Generator().manual_seed(5)
    grads = _exact_grads(base, 4)
    for step in grads[2:]:
        for g in step:
            g.mul_(torch.rand(g.shape, generator=gen) < 0.5)
    states = []
    for backend in ("torch", kernel_backend):
        params = _clone(base)
        opt = getattr(fusedlr, kind)(params, lr=0.0, betas=(0.5, 0.5), weight_decay=0.0, state_dtype="int8",
                                     backend=backend)  # fmt: skip
        run_steps(opt, params, grads)
        states.append([opt.state[p] for p in params])
    for ours, theirs in zip(states[1], states[0]):
        for name in ours:
            assert torch.equal(ours[name], theirs[name]), name
