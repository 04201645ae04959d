"""The compiled extension without a GPU: it imports, agrees with the Python tables, its schedule
interpreter (the same source the device runs) agrees with the host evaluator on every schedule,
and its errors are clear. Set FUSEDLR_EXPECT_EXTENSION=1 (CI does, where nvcc exists) to make a
missing extension a failure instead of a skip."""

import pytest
import torch
from test_schedule_library import BASE_LR, CASES, IDS

import fusedlr
from fusedlr import _cuda


@pytest.fixture(scope="module")
def ext(extension):
    return extension


def test_layout_matches_the_python_tables(ext):
    assert ext.layout() == {**ext.layout(), **_cuda._expected_layout()}
    assert set(_cuda._expected_layout()) <= set(ext.layout())


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_cuda_schedule_interpreter_matches_the_host(ext, case):
    _, schedule, reference, horizon = case
    program = schedule.program
    flat = program.flat()
    expected = reference(horizon)
    for k in range(horizon):
        scale, offset = ext.schedule_on_cpu(flat, len(program.instructions), program.scale_register,
                                            program.offset_register, float(k))  # fmt: skip
        host = schedule.scale_offset(k)
        assert scale == pytest.approx(host[0], rel=1e-12, abs=1e-15), f"k={k}"
        assert offset == pytest.approx(host[1], rel=1e-12, abs=1e-15), f"k={k}"
        assert BASE_LR * scale + offset == pytest.approx(expected[k], rel=1e-9, abs=1e-12), f"k={k}"


def test_kernel_launch_without_a_gpu_raises_cuda_error_string(ext):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(RuntimeError, match="fusedlr CUDA error in finalize_kernel: .+"):
        ext.finalize(0, 1, 0, 1, 0, 0, 0, 0, 0, False, False, False, 0, 0, 0, 0, 0, 0, False, False, 0)


@pytest.mark.parametrize("launches", ["device", "host"])
def test_unknown_codes_and_impossible_launches_are_refused(ext, launches):
    """Before any launch (or host twin) runs: a clear ValueError."""
    from fusedlr import _plan

    api = ext if launches == "device" else ext.host
    chunks = (0, 1, 0, 1, 0, 1, 65536, 0, 0)  # tables, chunk range, chunk size, coef, found_inf
    with pytest.raises(ValueError, match="unknown dtype code 9"):
        api.update(_plan.RULES["adamw"], 9, *chunks, 0)
    with pytest.raises(ValueError, match="unknown rule code 7"):
        api.update(7, 0, *chunks, 0)
    with pytest.raises(ValueError, match="unknown rule code 7"):
        api.finalize(0, 1, 0, 1, 0, 0, 0, 0, 0, False, False, False, 7, 0, 0, 0, 0, 0, False, False, 0)
    with pytest.raises(ValueError, match="needs the group sums table"):
        api.finalize(0, 1, 0, 1, 0, 0, 0, 0, 0, False, False, False, _plan.RULES["schedulefree"], 0, 0, 0, 0, 0,
                     False, False, 0)  # fmt: skip
    with pytest.raises(ValueError, match="8-bit moments are AdamW's and LION's"):
        api.quantized_update(_plan.RULES["sgd"], 0, 0, *chunks, False, 0)
    with pytest.raises(ValueError, match="not a multiple of the 8-bit quantisation block"):
        api.quantized_update(_plan.RULES["adamw"], 0, 0, 0, 1, 0, 1, 0, 1, 1000, 0, 0, False, 0)
    with pytest.raises(ValueError, match="no 8-bit-moment kernel"):
        api.quantized_update(_plan.RULES["adamw"], 1, 1, *chunks, False, 0)  # float64 is never quantised


def test_cuda_backend_on_cpu_tensors_is_a_clear_error_before_any_change(ext):
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    opt = fusedlr.AdamW([p], backend="cuda")
    with pytest.raises(RuntimeError, match="backend='cuda' needs CUDA tensors"):
        opt.step()
    assert torch.equal(p.detach(), torch.ones(3)) and not opt.state


def test_available_backends_lists_cuda_only_with_a_gpu(ext):
    assert ("cuda" in fusedlr.available_backends()) == torch.cuda.is_available()


# ----- the mixed-precision update's element code, run on the host -----------------------------------

MIXED = [  # (param, grad, state) dtypes the Python side can produce, with master / stochastic rounding
    (torch.bfloat16, torch.bfloat16, torch.float32, True, False),
    (torch.bfloat16, torch.float32, torch.float32, True, False),
    (torch.bfloat16, torch.bfloat16, torch.bfloat16, True, False),
    (torch.bfloat16, torch.bfloat16, torch.bfloat16, False, True),
    (torch.bfloat16, torch.float32, torch.bfloat16, False, True),
    (torch.float16, torch.float16, torch.float32, True, False),
    (torch.float16, torch.float32, torch.bfloat16, True, False),
    (torch.float32, torch.float32, torch.bfloat16, False, False),
]


@pytest.mark.parametrize("kind", ["adamw", "amsgrad", "lion"])
@pytest.mark.parametrize("dtypes", MIXED, ids=lambda d: "-".join(str(x).removeprefix("torch.") for x in d))
def test_cuda_mixed_update_element_code_matches_the_torch_backend(ext, kind, dtypes):
    """The CUDA mixed-precision element function (compiled for the host from the same source)
    against fusedlr's torch backend on the same tensors: equal but for rare last bits."""
    from helpers import assert_same_storage

    from fusedlr import _precision, reference

    param_dtype, grad_dtype, state_dtype, master, stochastic = dtypes
    gen = torch.Generator().manual_seed(3)
    n, lr, step = 5000, 1e-2, 4
    group = dict(betas=(0.9, 0.99), weight_decay=0.1, eps=1e-8, amsgrad=kind == "amsgrad", maximize=False,
                 seed=9, stochastic_rounding=stochastic)  # fmt: skip
    base = torch.randn(n, generator=gen)
    grad = (torch.randn(n, generator=gen) * 0.3).to(grad_dtype)
    moments = {
        "exp_avg": (torch.randn(n, generator=gen) * 0.1).to(state_dtype),
        "exp_avg_sq": torch.rand(n, generator=gen).mul(0.01).to(state_dtype),
        "max_exp_avg_sq": torch.rand(n, generator=gen).mul(0.01).to(state_dtype),
    }
    names = {"adamw": ("exp_avg", "exp_avg_sq"), "amsgrad": ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
             "lion": ("exp_avg",)}[kind]  # fmt: skip

    def state():
        out = {name: moments[name].clone() for name in names}
        if kind != "lion":
            out["step"] = torch.tensor(float(step - 1))
        if master:
            out["master_param"] = base.clone()
        return out

    key = _precision.stream_key(group["seed"], 2, torch.tensor(step - 1))
    ours_param, ours_state = base.to(param_dtype), state()
    theirs_param, theirs_state = base.to(param_dtype), state()
    b1, b2 = group["betas"]
    coef = {"grad_scale": 1.0, "decay": 1 - lr * group["weight_decay"], "beta1": b1, "one_minus_beta1": 1 - b1,
            "beta2": b2, "one_minus_beta2": 1 - b2, "eps": group["eps"], "sr_key": float(key),
            "step_size": lr / (1 - b1**step) if kind != "lion" else lr,
            "bc2_sqrt": (1 - b2**step) ** 0.5 if kind != "lion" else 1.0,
            "unscale": 1.0, "clip_value": 0.0}  # fmt: skip
    from fusedlr import _plan

    def address(name):
        return ours_state[name].data_ptr() if name in ours_state else 0

    rule = "lion" if kind == "lion" else "adamw"

    ext.mixed_update_on_cpu(_plan.RULES[rule], _cuda.DTYPE_CODES[param_dtype], _cuda.DTYPE_CODES[grad_dtype],
                            _cuda.DTYPE_CODES[state_dtype], ours_param.data_ptr(), address("master_param"),
                            grad.data_ptr(), address("exp_avg"), address("exp_avg_sq"), address("max_exp_avg_sq"),
                            n, 0, [coef[c] for c in _plan.COEF_COLUMNS], stochastic)  # fmt: skip
    reference.update_in_fp32_(
        rule, theirs_param, grad.float(), theirs_state, group, lr, key=key if stochastic else None
    )
    # torch's CPU kernels fuse multiply-adds where the host build of the element code does not:
    # where a moment cancels to ~0 (bf16 inputs cancel exactly at times) one side keeps a tiny
    # residual, and LION's sign of it moves that weight by lr. Rare elements (assert_same_storage
    # counts them), bounded here.
    assert_same_storage(ours_param, theirs_param, atol=2 * lr)
    for name in names:
        assert_same_storage(ours_state[name], theirs_state[name], atol=1e-6)
    if master:
        ours_master, theirs_master = ours_state["master_param"], theirs_state["master_param"]
        off = ~torch.isclose(ours_master, theirs_master, rtol=1e-5, atol=1e-7)
        assert off.float().mean().item() <= 1e-3
        assert ((ours_master - theirs_master)[off].abs() <= 2 * lr).all()


def test_cuda_stochastic_rounding_index_uses_all_64_bits(ext):
    """Elements past 2**32 in one tensor draw from the high word of their index too: the host
    twin's roundings equal fusedlr/_precision.py's formula at indices 2**32 + 7 ...."""
    from fusedlr import _plan, _precision

    n, first, lr = 4096, 2**32 + 7, 2.0**-9  # a quarter of bf16's spacing at 1.0
    key = int(_precision.stream_key(1, 0, torch.tensor(0)))
    values = {"grad_scale": 1.0, "decay": 1.0, "step_size": lr, "bc2_sqrt": 1.0, "beta1": 0.0,
              "one_minus_beta1": 1.0, "beta2": 1.0, "one_minus_beta2": 0.0, "eps": 0.0,
              "sr_key": float(key), "unscale": 1.0, "clip_value": 0.0}  # fmt: skip
    param = torch.ones(n, dtype=torch.bfloat16)
    grad, exp_avg = -torch.ones(n), torch.zeros(n)  # LION: p = 1 + lr * sign(-grad) = 1 + 2**-9
    coef = [values[c] for c in _plan.COEF_COLUMNS]
    ext.mixed_update_on_cpu(_plan.RULES["lion"], _cuda.DTYPE_CODES[torch.bfloat16], _cuda.DTYPE_CODES[torch.float32],
                            _cuda.DTYPE_CODES[torch.float32], param.data_ptr(), 0, grad.data_ptr(),
                            exp_avg.data_ptr(), 0, 0, n, first, coef, True)  # fmt: skip
    index = torch.arange(first, first + n, dtype=torch.int64)
    inner = _precision.hash32((key + (index >> 32)) & _precision.MASK32)
    noise = _precision.hash32((index & _precision.MASK32) ^ inner) & 0xFFFF
    bits = torch.tensor(1.0 + 2.0**-9).view(torch.int32).item()
    expected = ((bits + noise) >> 16).to(torch.int32)
    assert torch.equal(param.view(torch.int16).to(torch.int32) & 0xFFFF, expected)
    assert 0.15 < (param.float() > 1.0).float().mean().item() < 0.35  # rounded up about a quarter of the time


def test_cuda_value_clip_element_code_matches_the_torch_backend(ext):
    """clip_value in the CUDA element code (compiled for the host): each grad element unscaled
    (GradScaler's reciprocal), clamped, then scaled by the norm clip, as clip_grad_value_ then
    clip_grad_norm_; fp32 grads beside bf16 params with an fp32 master copy."""
    from helpers import assert_same_storage

    from fusedlr import _plan, reference

    n, lr, loss_scale, limit, norm_clip = 4096, 1e-2, 2.0**10, 0.2, 0.5
    gen = torch.Generator().manual_seed(5)
    base = torch.randn(n, generator=gen)
    grad = torch.randn(n, generator=gen) * loss_scale
    group = dict(betas=(0.9, 0.99), weight_decay=0.1, eps=1e-8, amsgrad=False, maximize=False)
    b1, b2 = group["betas"]
    values = {"grad_scale": norm_clip, "decay": 1 - lr * group["weight_decay"], "step_size": lr / (1 - b1),
              "bc2_sqrt": (1 - b2) ** 0.5, "beta1": b1, "one_minus_beta1": 1 - b1, "beta2": b2,
              "one_minus_beta2": 1 - b2, "eps": group["eps"], "sr_key": 0.0, "unscale": 1 / loss_scale,
              "clip_value": limit}  # fmt: skip

    def state():
        return {"exp_avg": torch.zeros(n), "exp_avg_sq": torch.zeros(n), "step": torch.tensor(0.0),
                "master_param": base.clone()}  # fmt: skip

    ours_param, ours = base.to(torch.bfloat16), state()
    ext.mixed_update_on_cpu(_plan.RULES["adamw"], _cuda.DTYPE_CODES[torch.bfloat16], _cuda.DTYPE_CODES[torch.float32],
                            _cuda.DTYPE_CODES[torch.float32], ours_param.data_ptr(), ours["master_param"].data_ptr(),
                            grad.data_ptr(), ours["exp_avg"].data_ptr(), ours["exp_avg_sq"].data_ptr(), 0, n, 0,
                            [values[c] for c in _plan.COEF_COLUMNS], False)  # fmt: skip
    theirs_param, theirs = base.to(torch.bfloat16), state()
    clipped = (grad * (1 / loss_scale)).clamp(-limit, limit) * norm_clip
    assert (clipped.abs() == limit * norm_clip).float().mean() > 0.5  # most elements were clamped
    reference.update_in_fp32_("adamw", theirs_param, clipped, theirs, group, lr)
    assert_same_storage(ours_param, theirs_param, atol=2 * lr)
    for name in ("exp_avg", "exp_avg_sq", "master_param"):
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-7)
