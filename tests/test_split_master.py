"""Split master weights (``master_weights="split"``): a bf16 param plus an int8 residual stand for
the float32 weight. The reconstruction bound, the update against torch AdamW on fp32 copies, the
kernels against the torch backend, state dicts and conversions, and the refusals."""

import io

import pytest
import torch
from helpers import make_grads, make_params, run_steps

import fusedlr
from fusedlr import _split_master

SHAPES = [(64, 100), (4097,), (30, 7), "transposed"]


def _bf16_params(seed=0):
    base = make_params([s if s != "transposed" else "transposed" for s in SHAPES], seed=seed, dtype=torch.float64)
    return [p.detach().to(torch.bfloat16).requires_grad_() for p in base]


def _clone(params):
    return [p.detach().clone(memory_format=torch.preserve_format).requires_grad_() for p in params]


def _bit_distance(a, b):
    return (a.view(torch.int32).long() - b.view(torch.int32).long()).abs()


def test_reconstruction_is_within_2_to_the_minus_16_of_the_weight():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(200_000, generator=gen) * torch.logspace(-30, 30, 200_000)
    p, e = _split_master.split(w)
    back = _split_master.reconstruct(p, e)
    assert _bit_distance(w, back).max() <= 128  # no clamp: everywhere, ties included
    assert ((w - back).abs() <= w.abs() * 2**-16).all()
    # The param is the bf16 nearest w, except within 128 units of a tie (then the other neighbour).
    d = (w.view(torch.int32).long() - w.to(torch.bfloat16).float().view(torch.int32).long()).abs()
    assert torch.equal(p[d < 32640], w.to(torch.bfloat16)[d < 32640])
    assert (_bit_distance(p.float(), w) <= 32768 + 128).all()
    # Re-encoding a reconstructed weight changes nothing: a step that keeps the weight keeps it.
    again_p, again_e = _split_master.split(back)
    assert torch.equal(again_p, p) and torch.equal(again_e, e)
    # An exact bf16 value has residual 0 and comes back exactly.
    exact_p, exact_e = _split_master.split(p.float())
    assert torch.equal(exact_p, p) and torch.equal(exact_e, torch.zeros_like(e))


def test_reconstruction_handles_signs_zeros_subnormals_and_ties():
    tie = 1.0 + 2**-8  # halfway between two bf16 values; and 128 units either side of it
    w = torch.tensor([0.0, -0.0, 1e-40, -1e-40, 3.0000002, -3.0000002, 1.0 + 2**-9, -(1.0 + 2**-9), 65504.0, tie, -tie])
    w = torch.cat([w, torch.nextafter(w[-2:], torch.tensor(2.0)), (w[-2:].view(torch.int32) + 130).view(torch.float32)])
    p, e = _split_master.split(w)
    back = _split_master.reconstruct(p, e)
    assert (_bit_distance(w, back) <= 128).all()
    assert torch.equal(torch.signbit(back), torch.signbit(w))
    nan_p, nan_e = _split_master.split(torch.tensor([float("nan"), float("inf"), -float("inf")]))
    assert nan_p[0].isnan() and nan_e[0] == 0
    assert torch.equal(nan_p[1:].float(), torch.tensor([float("inf"), -float("inf")])) and (nan_e[1:] == 0).all()


def _fp32_master_reference(params, grads, lr, weight_decay):
    masters = [p.detach().float().requires_grad_() for p in params]
    ref = torch.optim.AdamW(masters, lr=lr, weight_decay=weight_decay, foreach=False)
    for step in grads:
        for m, g in zip(masters, step):
            m.grad = g.float()
        ref.step()
    return [m.detach() for m in masters]


def test_split_master_follows_torch_adamw_on_fp32_copies(backend):
    """Each step loses at most 2**-15 of the weight to the reconstruction: after 10 steps the
    reconstructed weights are within 10 * 2**-15 of the fp32 masters (relative), and the params
    are those weights split again (the bf16 nearest, but within 128 units of a tie), so they
    differ from the fp32 masters' bf16 roundings only where a master is that near a tie."""
    params = _bf16_params()
    grads = [[g.to(torch.bfloat16) for g in step] for step in make_grads(params, 10)]
    masters = _fp32_master_reference(params, grads, lr=1e-3, weight_decay=0.1)
    opt = fusedlr.AdamW(params, lr=1e-3, weight_decay=0.1, master_weights="split", backend=backend)
    run_steps(opt, params, grads)
    mismatched = []
    for p, m in zip(params, masters):
        state = opt.state[p]
        assert "master_param" not in state and state["master_residual"].dtype == torch.int8
        assert state["exp_avg"].dtype == torch.float32  # moments default to float32, as with a master
        weight = _split_master.reconstruct(p.detach(), state["master_residual"])
        torch.testing.assert_close(weight, m, rtol=10 * 2**-15, atol=1e-6)
        assert torch.equal(p.detach(), _split_master.split(weight)[0])
        differs = p.detach() != m.to(torch.bfloat16)
        # where they differ, the master is within the weights' distance (+128 units) of a bf16 tie
        tie_distance = (32768 - _bit_distance(m, m.to(torch.bfloat16).float())).abs()
        assert (tie_distance[differs] <= _bit_distance(weight, m)[differs] + 128).all()
        mismatched.append(differs.flatten())
    assert torch.cat(mismatched).float().mean() < 0.01  # over all 10,767 elements


def test_lion_with_split_master_follows_lion_pytorch_on_fp32_copies(backend):
    from lion_pytorch import Lion as ReferenceLion

    params = _bf16_params()
    grads = [[g.to(torch.bfloat16) for g in step] for step in make_grads(params, 10)]
    masters = [p.detach().float().requires_grad_() for p in params]
    run_steps(ReferenceLion(masters, lr=1e-3, weight_decay=0.1), masters, [[g.float() for g in s] for s in grads])
    opt = fusedlr.Lion(params, lr=1e-3, weight_decay=0.1, master_weights="split", backend=backend)
    run_steps(opt, params, grads)
    for p, m in zip(params, masters):
        weight = _split_master.reconstruct(p.detach(), opt.state[p]["master_residual"])
        torch.testing.assert_close(weight, m.detach(), rtol=10 * 2**-15, atol=1e-6)


def test_updates_below_half_a_bf16_step_accumulate(backend):
    """With lr far below a bf16 step, the param only moves through the residual: it moves as the
    fp32-master run does, where plain bf16 rounding to nearest stalls."""
    runs = {}
    for name, option in (("split", "split"), ("master", True), ("nearest", False)):
        p = torch.full((4096,), 1.0, dtype=torch.bfloat16, requires_grad=True)
        opt = fusedlr.AdamW([p], lr=1e-4, weight_decay=0.0, master_weights=option, backend=backend)
        for _ in range(30):  # 30 updates of about lr: past half a bf16 step below 1.0 (2**-9)
            p.grad = torch.ones_like(p)
            opt.step()
        runs[name] = p.detach().float()
    assert torch.equal(runs["nearest"], torch.ones(4096))  # 1e-4 < half of 2**-7: stalled
    assert torch.equal(runs["split"], runs["master"])
    assert (runs["split"] < 1.0).all()


def test_a_steady_update_of_128_to_256_units_does_not_stall(backend):
    """lr 1e-5 at 0.75 is about 168 float32 units a step. With the residual clamped to +-127 (the
    old encoding), the weight stopped for good once the residual reached the clamp, near the
    bf16 midpoint (about step 190); it must move on as the fp32-master run does."""
    runs = {}
    for name, option in (("split", "split"), ("master", True)):
        p = torch.full((4096,), 0.75, dtype=torch.bfloat16, requires_grad=True)
        opt = fusedlr.AdamW([p], lr=1e-5, weight_decay=0.0, master_weights=option, backend=backend)
        for _ in range(240):
            p.grad = torch.ones_like(p)
            opt.step()
        state = opt.state[p]
        runs[name] = (p.detach().clone(), _split_master.reconstruct(p.detach(), state["master_residual"])
                      if name == "split" else state["master_param"].clone())  # fmt: skip
    (split_p, split_w), (master_p, master_w) = runs["split"], runs["master"]
    assert (master_p < 0.75).all() and torch.equal(split_p, master_p)  # crossed the midpoint, as fp32
    # each step's weight rounded to 24 bits: at most 128 units a step, in 240 steps
    assert (_bit_distance(split_w, master_w) <= 240 * 128).all()


def test_kernels_match_the_torch_backend_and_are_deterministic(kernel_backend):
    base = _bf16_params()
    grads = [[g.to(torch.bfloat16) for g in step] for step in make_grads(base, 5, scale=2.0)]
    runs = []
    for backend in ("torch", kernel_backend, kernel_backend):
        params = _clone(base)
        opt = fusedlr.AdamW(params, lr=1e-2, weight_decay=0.1, max_grad_norm=1.0, master_weights="split",
                            state_dtype="int8", backend=backend)  # fmt: skip
        run_steps(opt, params, grads)
        runs.append([(p.detach(), opt.state[p]) for p in params])
    for (p1, s1), (p2, s2) in zip(runs[1], runs[2]):  # the same backend twice: the same bits
        assert torch.equal(p1, p2) and all(torch.equal(s1[k], s2[k]) for k in s1)
    for (p, state), (q, ref) in zip(runs[1], runs[0]):
        # Last-bit differences of the AdamW arithmetic (the norm's summation order) move a
        # residual by a unit, rarely.
        ours = _split_master.reconstruct(p, state["master_residual"])
        theirs = _split_master.reconstruct(q, ref["master_residual"])
        torch.testing.assert_close(ours, theirs, rtol=2**-14, atol=1e-6)
        assert (p != q).float().mean() < 0.01


def test_state_dict_round_trip_and_resume_bit_for_bit(backend):
    base = _bf16_params()
    grads = [[g.to(torch.bfloat16) for g in step] for step in make_grads(base, 6)]
    options = dict(lr=1e-2, master_weights="split", state_dtype="int8", backend=backend)
    straight = _clone(base)
    opt = fusedlr.AdamW(straight, **options)
    run_steps(opt, straight, grads)
    first = _clone(base)
    opt_a = fusedlr.AdamW(first, **options)
    run_steps(opt_a, first, grads[:3])
    buffer = io.BytesIO()
    torch.save(opt_a.state_dict(), buffer)
    buffer.seek(0)
    resumed = _clone(first)
    opt_b = fusedlr.AdamW(resumed, **options)
    opt_b.load_state_dict(torch.load(buffer, weights_only=True))
    assert opt_b.state[resumed[0]]["master_residual"].dtype == torch.int8
    run_steps(opt_b, resumed, grads[3:])
    for p, q in zip(straight, resumed):
        assert torch.equal(p.detach(), q.detach())
        assert all(torch.equal(opt.state[p][k], opt_b.state[q][k]) for k in opt.state[p])


def test_switching_between_fp32_and_split_masters(backend):
    params = _bf16_params()
    grads = [[g.to(torch.bfloat16) for g in step] for step in make_grads(params, 3)]
    opt = fusedlr.AdamW(params, lr=1e-2, master_weights=True, backend=backend)
    run_steps(opt, params, grads[:1])
    masters = [opt.state[p]["master_param"].clone() for p in params]
    opt.param_groups[0]["master_weights"] = "split"
    opt.param_groups[0]["lr"] = 0.0
    opt.param_groups[0]["weight_decay"] = 0.0
    run_steps(opt, params, grads[1:2])  # lr 0: the weights stay; the masters become residuals
    for p, m in zip(params, masters):
        assert "master_param" not in opt.state[p]
        weight = _split_master.reconstruct(p.detach(), opt.state[p]["master_residual"])
        assert (_bit_distance(weight, m) <= 256).all()
    opt.param_groups[0]["master_weights"] = True
    run_steps(opt, params, grads[2:])
    for p, m in zip(params, masters):
        assert "master_residual" not in opt.state[p]
        assert (_bit_distance(opt.state[p]["master_param"], m) <= 256).all()


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="Invalid master_weights"):
        fusedlr.AdamW(make_params([(5,)]), master_weights="fp32")
    with pytest.raises(ValueError, match="exclude each other"):
        fusedlr.AdamW(make_params([(5,)]), master_weights="split", stochastic_rounding=True)
    _split_master.check_step([dict(master_weights="split")], sharded=False)  # every backend (cuda included)
    with pytest.raises(RuntimeError, match="DTensor"):
        _split_master.check_step([dict(master_weights="split")], sharded=True)


def test_fp16_params_are_refused_before_any_change(backend):
    params = [p.detach().half().requires_grad_() for p in make_params([(40,), (8, 8)])]
    before = [p.detach().clone() for p in params]
    opt = fusedlr.AdamW(params, lr=1e-2, master_weights="split", backend=backend)
    for p in params:
        p.grad = torch.ones_like(p)
    with pytest.raises(RuntimeError, match="split.*bfloat16"):
        opt.step()
    assert all(torch.equal(p.detach(), b) for p, b in zip(params, before))
    assert not opt.state
