"""bf16/fp16 training: fp32 master weights, stochastic rounding, low-precision states, fp32
grads for bf16 params (``grad_attribute="main_grad"``), on every CPU backend.

The torch backend computes each low-precision step on fp32 copies and rounds once, as the
kernels do, so the Triton kernels must match it but for rare last bits; both are checked against
independent references: torch.optim.AdamW on fp32 copies (master weights), an fp64 run
(error bounds), and the mean of many stochastic roundings (unbiasedness).
"""

import io

import pytest
import torch
from helpers import assert_same_storage, make_grads, make_params, run_steps

import fusedlr
from fusedlr import _precision, schedules

SHAPES = [(4097,), (30, 7), (1,)]


def _low(base, dtype):
    return [p.detach().to(dtype).requires_grad_() for p in base]


def _make(kind, params, backend, **options):
    common = dict(lr=1e-2, weight_decay=0.1, max_grad_norm=1.0, schedule=schedules.WarmupCosine(2, 10))
    if kind == "lion":
        return fusedlr.Lion(params, **common, backend=backend, **options)
    return fusedlr.AdamW(params, **common, amsgrad=kind == "amsgrad", backend=backend, **options)


OPTIONS = {
    "master": dict(master_weights=True),
    "master-bf16-states": dict(master_weights=True, state_dtype=torch.bfloat16),
    "stochastic": dict(stochastic_rounding=True, seed=7),
    "bf16-states": dict(state_dtype=torch.bfloat16),
    "same-dtype": dict(),
}


@pytest.mark.parametrize("kind", ["adamw", "amsgrad", "lion"])
@pytest.mark.parametrize("option", list(OPTIONS))
def test_kernels_match_the_torch_backend(kernel_backend, kind, option):
    base = make_params(SHAPES, dtype=torch.float64)
    grads = [[g.to(torch.bfloat16) for g in step] for step in make_grads(base, 6, scale=2.0)]
    results = []
    for backend in ("torch", kernel_backend):
        params = _low(base, torch.bfloat16)
        opt = _make(kind, params, backend, **OPTIONS[option])
        run_steps(opt, params, grads)
        results.append((params, opt))
    (ours, opt), (theirs, ref) = results[1], results[0]
    for p, q in zip(ours, theirs):
        assert_same_storage(p.detach(), q.detach(), atol=1e-2 * 2**-6)  # lr = 1e-2
        assert opt.state[p].keys() == ref.state[q].keys()
        for name, value in ref.state[q].items():
            # A moment one unit off at some step stays off, decaying: near zero that is far in
            # relative terms, so the absolute slack is half a unit at the largest moment.
            assert_same_storage(opt.state[p][name], value, atol=2**-8 * value.abs().max().item())


def _fp32_master_reference(params, grads):
    """torch AdamW on fp32 copies of ``params``, each step's grads cast up and clipped to 1.0."""
    masters = [p.detach().float().requires_grad_() for p in params]
    ref = torch.optim.AdamW(masters, lr=1e-2, foreach=False)
    for step in grads:
        for m, g in zip(masters, step):
            m.grad = g.float()
        torch.nn.utils.clip_grad_norm_(masters, 1.0, foreach=False)
        ref.step()
    return [m.detach() for m in masters]


def test_master_weights_follow_torch_adamw_on_fp32_copies(backend):
    """The reference users write by hand: torch AdamW on fp32 copies of bf16 params, grads cast up,
    clip_grad_norm_ on them, the bf16 params overwritten with the rounded copies."""
    base = make_params(SHAPES, dtype=torch.float64)
    grads = [[g.to(torch.bfloat16) for g in step] for step in make_grads(base, 8, scale=2.0)]
    params = _low(base, torch.bfloat16)
    opt = fusedlr.AdamW(params, lr=1e-2, max_grad_norm=1.0, master_weights=True, backend=backend)
    run_steps(opt, params, grads)

    masters = _fp32_master_reference(_low(base, torch.bfloat16), grads)
    for p, m in zip(params, masters):
        master = opt.state[p]["master_param"]
        assert master.dtype == torch.float32 and opt.state[p]["exp_avg"].dtype == torch.float32
        torch.testing.assert_close(master, m, rtol=2e-5, atol=2e-6)
        assert torch.equal(p.detach(), master.to(torch.bfloat16))  # round-to-nearest-even of the master


@pytest.mark.parametrize("param_dtype", [torch.bfloat16, torch.float16])
def test_fp32_main_grads_for_low_precision_params(backend, param_dtype):
    """``grad_attribute="main_grad"``: fp32 accumulation buffers beside bf16/fp16 params (torch
    refuses an fp32 ``.grad`` there); the step reads them and leaves ``.grad`` alone."""
    base = make_params(SHAPES, dtype=torch.float64)
    grads = make_grads(base, 5, scale=2.0)
    params = _low(base, param_dtype)
    opt = fusedlr.AdamW(params, lr=1e-2, max_grad_norm=1.0, master_weights=True, grad_attribute="main_grad",
                        backend=backend)  # fmt: skip
    for step in grads:
        for p, g in zip(params, step):
            p.main_grad = g.float()
        opt.step()
    masters = _fp32_master_reference(_low(base, param_dtype), grads)
    for p, m in zip(params, masters):
        assert p.grad is None
        torch.testing.assert_close(opt.state[p]["master_param"], m, rtol=2e-5, atol=2e-6)


def test_bf16_gpt_training_tracks_the_fp32_master_reference():
    """A 2-layer GPT (width 32) trained 150 steps in bf16 on the CPU with the torch backend: master
    weights follow the hand-written fp32-master loop, stochastic rounding ends where it ends.
    (tests/gpu runs 300 steps, width 64, on the kernel backends.)"""
    import tiny_gpt

    tiny_gpt.check_tracking(tiny_gpt.train_all(device="cpu", steps=150, width=32, backend="torch"))


def test_stochastic_rounding_is_unbiased():
    """Mean of many roundings of each value matches the fp32 value (torchao's check): 1024
    values, 8192 keys each."""
    values = torch.randn(1024, generator=torch.Generator().manual_seed(0), dtype=torch.float32) * 3
    keys = [_precision.stream_key(11, 3, torch.tensor(k)) for k in range(8192)]
    total = torch.zeros(1024, dtype=torch.float64)
    for key in keys:
        total += _precision.round_stochastically(values, key).double()
    mean = total / len(keys)
    relative = ((mean - values.double()).abs().sum() / values.double().abs().sum()).item()
    assert relative < 3e-5
    ulp = values.abs().double() * 2.0**-7  # bf16 spacing, at most
    assert bool(((mean - values.double()).abs() <= 6 * ulp / len(keys) ** 0.5).all())


def test_stochastic_rounding_stream_is_deterministic_and_keyed():
    values = torch.randn(1000, generator=torch.Generator().manual_seed(1))
    key = _precision.stream_key(5, 2, torch.tensor(9))
    first = _precision.round_stochastically(values, key)
    assert torch.equal(first.view(torch.int16), _precision.round_stochastically(values, key).view(torch.int16))
    for other in (_precision.stream_key(6, 2, torch.tensor(9)), _precision.stream_key(5, 3, torch.tensor(9)),
                  _precision.stream_key(5, 2, torch.tensor(10))):  # fmt: skip
        assert not torch.equal(first, _precision.round_stochastically(values, other))
    exact = torch.tensor([1.0, -2.5, 0.0, float("inf"), float("-inf")])  # representable: unchanged
    assert torch.equal(_precision.round_stochastically(exact, key).float(), exact)
    assert torch.isnan(_precision.round_stochastically(torch.tensor([float("nan")]), key)).all()


def test_stochastic_rounding_lets_updates_below_half_an_ulp_accumulate(backend):
    """LION moves each weight by lr per step; with lr a tenth of bf16's spacing at 1.0,
    round-to-nearest never moves the weights, stochastic rounding tracks the fp32 run on average."""
    lr, steps = 2.0**-7 / 10, 60
    grads = [[torch.ones(4096)] for _ in range(steps)]

    def run(dtype, **options):
        params = [torch.ones(4096, dtype=dtype, requires_grad=True)]
        opt = fusedlr.Lion(params, lr=lr, backend=backend, **options)
        run_steps(opt, params, [[g.to(dtype) for g in step] for step in grads])
        return params[0].detach().double()

    exact = run(torch.float32).mean().item()
    assert run(torch.bfloat16).mean().item() == 1.0  # stalled
    stochastic = run(torch.bfloat16, stochastic_rounding=True).mean().item()
    assert abs(stochastic - exact) < 0.02 * abs(1.0 - exact)


def test_bf16_states_halve_state_memory_and_stay_accurate(backend):
    """fp32 params, bf16 moments: error against fp64 at most 2x that of torch AdamW run entirely
    in bf16 (the same maths in plain PyTorch at that precision)."""
    base = make_params([(4097,), (30, 7)], dtype=torch.float64)
    grads = make_grads(base, 10)

    def run(param_dtype, use_fusedlr, **options):
        params = _low(base, param_dtype)
        steps = [[g.to(param_dtype) for g in step] for step in grads]
        if use_fusedlr:
            opt = fusedlr.AdamW(params, lr=1e-2, backend=backend, **options)
        else:
            opt = torch.optim.AdamW(params, lr=1e-2, foreach=False)
        run_steps(opt, params, steps)
        return opt, [p.detach().double() for p in params]

    _, exact = run(torch.float64, False)
    opt, ours = run(torch.float32, True, state_dtype=torch.bfloat16)
    _, all_bf16 = run(torch.bfloat16, False)
    for e, o, t in zip(exact, ours, all_bf16):
        assert (o - e).abs().max() <= 2 * (t - e).abs().max()
    state_bytes = sum(v.numel() * v.element_size() for s in opt.state.values() for k, v in s.items() if k != "step")
    assert state_bytes == 2 * 2 * sum(p.numel() for p in base)


@pytest.mark.parametrize("option", ["master", "stochastic", "bf16-states"])
def test_state_dict_keeps_master_and_state_dtypes_and_resumes_bit_for_bit(backend, option):
    base = make_params(SHAPES, dtype=torch.float64)
    grads = [[g.to(torch.bfloat16) for g in step] for step in make_grads(base, 8, scale=2.0)]
    straight = _low(base, torch.bfloat16)
    opt = _make("adamw", straight, backend, **OPTIONS[option])
    run_steps(opt, straight, grads)

    first = _low(base, torch.bfloat16)
    opt_a = _make("adamw", first, backend, **OPTIONS[option])
    run_steps(opt_a, first, grads[:4])
    buffer = io.BytesIO()
    torch.save(opt_a.state_dict(), buffer)
    buffer.seek(0)
    resumed = [p.detach().clone().requires_grad_() for p in first]
    opt_b = _make("adamw", resumed, backend, **OPTIONS[option])
    opt_b.load_state_dict(torch.load(buffer, weights_only=True))
    for p, q in zip(resumed, first):
        for name, value in opt_a.state[q].items():
            assert opt_b.state[p][name].dtype == value.dtype, name
    run_steps(opt_b, resumed, grads[4:])
    for p, q in zip(resumed, straight):
        assert torch.equal(p.detach(), q.detach())
        for name, value in opt.state[q].items():
            assert torch.equal(opt_b.state[p][name], value), name


def test_turning_options_on_later_converts_the_state(backend):
    params = _low(make_params([(64,)], dtype=torch.float64), torch.bfloat16)
    opt = fusedlr.AdamW(params, lr=1e-2, backend=backend)
    params[0].grad = torch.ones(64, dtype=torch.bfloat16)
    opt.step()
    assert opt.state[params[0]]["exp_avg"].dtype == torch.bfloat16
    opt.param_groups[0]["master_weights"] = True
    opt.step()
    state = opt.state[params[0]]
    assert state["exp_avg"].dtype == torch.float32 and state["master_param"].dtype == torch.float32
    opt.param_groups[0]["master_weights"] = False
    opt.step()
    assert "master_param" not in opt.state[params[0]] and state["exp_avg"] is not None


# ----- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [(dict(master_weights=True, stochastic_rounding=True), "exclude each other"),
     (dict(state_dtype=torch.float16), "Invalid state_dtype"),
     (dict(seed=-1), "Invalid seed"), (dict(seed=2**32), "Invalid seed"), (dict(seed=1.5), "Invalid seed"),
     (dict(grad_attribute="not an attribute"), "Invalid grad_attribute")],
)  # fmt: skip
def test_bad_options_raise_value_errors(options, message):
    params = make_params([(4,)])
    for cls in (fusedlr.AdamW, fusedlr.Lion):
        with pytest.raises(ValueError, match=message):
            cls(params, **options)
    if "grad_attribute" not in options:
        opt = fusedlr.AdamW(params)
        with pytest.raises(ValueError, match=message):
            opt.add_param_group(dict(params=make_params([(3,)]), **options))


@pytest.mark.parametrize(
    "dtype, grad_dtype, options, message",
    [(torch.float16, torch.float16, dict(stochastic_rounding=True), "stochastic_rounding supports bfloat16"),
     (torch.bfloat16, torch.float16, dict(master_weights=True), "grads have the param's dtype, or float32"),
     (torch.float32, torch.bfloat16, dict(), "grads have the param's dtype, or float32"),
     (torch.float64, torch.float64, dict(state_dtype=torch.bfloat16), "state_dtype does not apply to float64")],
)  # fmt: skip
def test_options_a_param_cannot_take_are_refused_before_any_change(backend, dtype, grad_dtype, options, message):
    params = [torch.ones(8, dtype=dtype, requires_grad=True), torch.ones(3, dtype=torch.float32, requires_grad=True)]
    opt = fusedlr.AdamW(params, lr=0.1, grad_attribute="main_grad", backend=backend, **options)
    params[1].main_grad = torch.ones(3)
    params[0].main_grad = torch.ones(8, dtype=grad_dtype)
    before = [p.detach().clone() for p in params]
    with pytest.raises(RuntimeError, match=message):
        opt.step()
    assert all(torch.equal(p.detach(), b) for p, b in zip(params, before))
    assert not any(opt.state[p] for p in params)


def test_stochastic_rounding_steps_an_empty_tensor_beside_others(backend):
    """An empty param of two dimensions (a local shard of an uneven FSDP2 split, (0, 6) say)
    next to others: the step runs, the others are updated, the empty one stays empty."""
    params = [
        torch.nn.Parameter(torch.randn(4, 6, dtype=torch.bfloat16)),
        torch.nn.Parameter(torch.zeros(0, 6, dtype=torch.bfloat16)),
        torch.nn.Parameter(torch.zeros(0, dtype=torch.bfloat16)),
    ]
    for p in params:
        p.grad = torch.ones_like(p)
    before = params[0].detach().clone()
    opt = fusedlr.AdamW(params, lr=1e-2, stochastic_rounding=True, backend=backend)
    opt.step()
    assert not torch.equal(params[0].detach(), before)
    assert params[1].shape == (0, 6) and params[2].shape == (0,)
