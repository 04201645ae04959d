"""The cpu backend's own paths: torch's fused and foreach kernels where they fit, the reference
where they do not, and the same numbers either way. (The parity tests, the AMP, error and
state-dict tests run it too: the ``backend`` fixture includes it.)"""

import pytest
import torch
from helpers import AWKWARD_SHAPES, FP32_TOL, assert_states_close, clone_params, make_grads, make_params, run_steps
from lion_pytorch import Lion as ReferenceLion
from oracles import hf_cosine, run_by_hand

import fusedlr
from fusedlr import _backends, _cpu, _cpu_updates, schedules

STEPS = 12


@pytest.fixture
def fused_adamw_calls(monkeypatch):
    """Counts the calls of torch's fused AdamW kernel (and still runs it)."""
    return _record_calls(monkeypatch, "_fused_adamw_", lambda params, kwargs: len(params))


def _record_calls(monkeypatch, name, what, calls=None):
    """``calls``, to which every call of ``torch.<name>`` (still run) appends ``what(params, kwargs)``."""
    calls = [] if calls is None else calls
    kernel = getattr(torch, name)

    def recording(params, *args, **kwargs):
        calls.append(what(params, kwargs))
        return kernel(params, *args, **kwargs)

    monkeypatch.setattr(torch, name, recording)
    return calls


def _torch_adamw(groups):
    return torch.optim.AdamW(groups, foreach=False)


def test_auto_on_cpu_tensors_runs_the_fused_kernel(fused_adamw_calls):
    params = make_params()
    opt = fusedlr.AdamW([dict(params=params[:4]), dict(params=params[4:], lr=1e-2)], max_grad_norm=1.0)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    assert _backends.choose("auto", params[0].device) == "cpu"
    assert isinstance(opt._plan_cache, _cpu.CpuPlan) and opt._plan_cache.fast
    assert fused_adamw_calls == [4, len(params) - 4]  # one call per group: every tensor


def test_lion_is_the_reference_to_the_bit():
    """LION runs the reference's operations, only over lists: the same bits, with AGC, an active
    clip, maximize, several groups and a group without weight decay."""
    base = make_params()
    grads = make_grads(base, STEPS, scale=3.0, skip=lambda step, i: i == 4 and step % 4 == 0)
    runs = []
    for backend in ("torch", "cpu"):
        params = clone_params(base)
        groups = [
            dict(params=params[:4], lr=1e-3, weight_decay=0.1, agc_clip_factor=0.05),
            dict(params=params[4:], lr=3e-4, weight_decay=0.0, betas=(0.95, 0.98), maximize=True),
        ]
        opt = fusedlr.Lion(groups, schedule=schedules.WarmupCosine(3, 12), max_grad_norm=1.0, backend=backend)
        runs.append((opt, params, run_steps(opt, params, grads)))
    (ref, ref_params, ref_norms), (opt, params, norms) = runs
    assert_states_close(opt, params, ref, ref_params, rtol=0, atol=0)
    assert torch.equal(torch.stack(norms), torch.stack(ref_norms))


def test_lion_by_tensor_and_by_block_is_the_reference_to_the_bit(monkeypatch):
    """Small tensors together, large ones one by one, large contiguous ones in blocks (here of
    1,000 elements: the 4097-element tensor in five): the same bits as the reference."""
    monkeypatch.setattr(_cpu_updates, "SERIAL_NUMEL", 16)
    monkeypatch.setattr(_cpu_updates, "BLOCK_NUMEL", 1000)
    base = make_params(AWKWARD_SHAPES + [(3000, 2)])
    grads = make_grads(base, STEPS, scale=3.0)
    runs = []
    for backend in ("torch", "cpu"):
        params = clone_params(base)
        opt = fusedlr.Lion(params, lr=1e-3, weight_decay=0.1, maximize=True, max_grad_norm=1.0, backend=backend)
        runs.append((opt, params, run_steps(opt, params, grads)))
    (ref, ref_params, _), (opt, params, _) = runs
    assert_states_close(opt, params, ref, ref_params, rtol=0, atol=0)


def test_adamw_clip_and_agc_norms_are_the_reference_norms():
    """The vectorized norms, AGC and clip scales are the reference's per-tensor ones, to the bit
    (the first step, where both see the same params)."""
    base = make_params()
    grads = make_grads(base, 1, scale=5.0)
    norms = []
    for backend in ("torch", "cpu"):
        params = clone_params(base)
        groups = [dict(params=params[:5], agc_clip_factor=0.02), dict(params=params[5:], agc_clip_factor=0.5)]
        opt = fusedlr.AdamW(groups, max_grad_norm=2.0, backend=backend)
        norms += run_steps(opt, params, grads)
    assert torch.equal(norms[0], norms[1])


def test_small_tensors_on_one_thread_and_large_ones_on_all(monkeypatch, fused_adamw_calls):
    """With the serial threshold at 16 elements the awkward shapes split into both parts; the
    result is torch's, and the caller's thread count is restored."""
    monkeypatch.setattr(_cpu_updates, "SERIAL_NUMEL", 16)
    threads = torch.get_num_threads()
    base = make_params()
    grads = make_grads(base, STEPS)
    ours = clone_params(base)
    opt = fusedlr.AdamW(ours, lr=1e-2, amsgrad=True, max_grad_norm=1.0, backend="cpu")
    run_steps(opt, ours, grads)
    theirs = clone_params(base)
    spec = [dict(params=list(range(len(base))), lr=1e-2, amsgrad=True)]
    ref, _ = run_by_hand(_torch_adamw, theirs, spec, grads, max_grad_norm=1.0)
    assert_states_close(opt, ours, ref, theirs)
    small = sum(p.numel() < 16 for p in base)
    assert 0 < small < len(base)
    assert fused_adamw_calls[:2] == [small, len(base) - small]
    assert torch.get_num_threads() == threads


def _with_gaps(params):
    """Copies of ``params``, the last one kept with gaps in memory (every other column)."""
    copies = clone_params(params[:-1])
    gapped = torch.zeros(params[-1].shape[0], 2 * params[-1].shape[1])[:, ::2]
    return copies + [gapped.copy_(params[-1].detach()).requires_grad_()]


def _mislaid(grads_per_step):
    """At odd steps, the transposed param's grad contiguous and the (2, 3) param's column-major."""
    out = []
    for step, grads in enumerate(grads_per_step):
        grads = list(grads)
        if step % 2:
            grads[4] = grads[4].contiguous()
            grads[5] = torch.empty(3, 2).t().copy_(grads[5])
        out.append(grads)
    return out


@pytest.mark.parametrize("kind", ["adamw", "lion"])
def test_layouts_the_kernels_cannot_walk_take_the_reference_update(kind, fused_adamw_calls):
    base = make_params(AWKWARD_SHAPES + [(6, 5)])
    grads = _mislaid(make_grads(base, STEPS))
    assert grads[1][4].stride() != base[4].stride() and grads[1][5].stride() != base[5].stride()
    ours, theirs = _with_gaps(base), clone_params(base)
    assert not ours[-1].is_contiguous() and ours[-1].grad is None
    spec = [dict(params=list(range(len(base))), lr=1e-2)]
    cls, reference = (fusedlr.AdamW, _torch_adamw) if kind == "adamw" else (fusedlr.Lion, ReferenceLion)
    opt = cls(ours, lr=1e-2, max_grad_norm=1.0, schedule=schedules.WarmupCosine(2, 12), backend="cpu")
    run_steps(opt, ours, grads)
    ref, _ = run_by_hand(reference, theirs, spec, grads, lr_lambda=hf_cosine(2, 12), max_grad_norm=1.0)
    assert_states_close(opt, ours, ref, theirs)
    if kind == "adamw":  # the gapped param never; the mislaid grads' params at odd steps only
        assert fused_adamw_calls[:2] == [len(base) - 1, len(base) - 3]


@pytest.mark.parametrize(
    "options",
    [dict(master_weights=True), dict(stochastic_rounding=True), dict(state_dtype=torch.bfloat16)],
    ids=["master", "stochastic", "bf16-states"],
)
def test_low_precision_steps_are_the_reference_steps(options, fused_adamw_calls):
    """bf16 params (or bf16 moments): the whole step is the reference's, to the bit."""
    base = make_params([(4097,), (30, 7), (1,)], dtype=torch.float64)
    dtype = torch.float32 if "state_dtype" in options else torch.bfloat16
    grads = [[g.to(dtype) for g in step] for step in make_grads(base, 6, scale=2.0)]
    runs = []
    for backend in ("torch", "cpu"):
        params = [p.detach().to(dtype).requires_grad_() for p in base]
        opt = fusedlr.AdamW(params, lr=1e-2, max_grad_norm=1.0, backend=backend, **options)
        run_steps(opt, params, grads)
        runs.append((opt, params))
    (ref, ref_params), (opt, params) = runs
    assert_states_close(opt, params, ref, ref_params, rtol=0, atol=0)
    assert not fused_adamw_calls and not opt._plan_cache.fast


@pytest.mark.parametrize("agc", [None, 0.01], ids=["clip", "agc+clip"])
@pytest.mark.parametrize("scaled", [False, True], ids=["", "gradscaler"])
@pytest.mark.parametrize("cls", [fusedlr.AdamW, fusedlr.Lion])
def test_active_clip_and_gradscaler_leave_grad_alone(cls, scaled, agc):
    """The fused unscale and clip work on copies: ``.grad`` keeps its values (GradScaler's scaled ones)."""
    params = make_params()
    opt = cls(params, lr=1e-2, max_grad_norm=0.1, agc_clip_factor=agc, backend="cpu")
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    grads = make_grads(params, 1, scale=10.0)[0]
    for p, g in zip(params, grads):
        p.grad = scaler.scale(g) if scaled else g
    before = [p.grad.clone() for p in params]
    scaler.step(opt) if scaled else opt.step()
    for p, g in zip(params, before):
        assert torch.equal(p.grad, g)
    assert int(opt.state_dict()["schedule_step"]) == 1 and float(opt.last_grad_norm) > 0.1


def test_new_grad_tensors_every_step_reuse_the_plan():
    params = make_params()
    opt = fusedlr.AdamW(params, max_grad_norm=1.0, backend="cpu")
    plans = []
    for grads in make_grads(params, 3):
        opt.zero_grad(set_to_none=True)
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        plans.append(opt._plan_cache)
    assert plans[0] is plans[1] is plans[2]


def test_cpu_backend_needs_cpu_tensors():
    with pytest.raises(RuntimeError, match="backend='cpu' needs CPU tensors"):
        _backends.choose("cpu", torch.device("meta"))
    assert _backends.choose("auto", torch.device("meta")) == "torch"


def test_many_tensors_and_zero_size_ones_match_torch():
    base = make_params([(0,), (3,), (0, 4)] + [(17,)] * 50 + AWKWARD_SHAPES)
    grads = make_grads(base, 5)
    ours = clone_params(base)
    opt = fusedlr.AdamW(ours, lr=1e-2, weight_decay=0.1, max_grad_norm=1.0, backend="cpu")
    run_steps(opt, ours, grads)
    theirs = clone_params(base)
    ref, _ = run_by_hand(_torch_adamw, theirs, [dict(params=list(range(len(base))), lr=1e-2, weight_decay=0.1)],
                         grads, max_grad_norm=1.0)  # fmt: skip
    assert_states_close(opt, ours, ref, theirs, **FP32_TOL)


# ----- SGD and Schedule-Free AdamW -----------------------------------------------------------------

SGD_CASES = {
    "momentum": dict(momentum=0.9, weight_decay=0.1),
    "nesterov": dict(momentum=0.9, nesterov=True, weight_decay=0.1, maximize=True),
    "dampening": dict(momentum=0.8, dampening=0.5),
    "no-momentum": dict(momentum=0.0, weight_decay=0.1),
    "decoupled": dict(momentum=0.9, weight_decay=0.1, decoupled_weight_decay=True),
}
SCHEDULEFREE_CASES = {
    "decay": dict(weight_decay=0.1, warmup_steps=3),
    "maximize": dict(weight_decay=0.0, betas=(0.95, 0.99), maximize=True, r=1.0),
}


def _sgd(groups, options, backend):
    return fusedlr.SGD(groups, lr=0.05, **options, max_grad_norm=1.0, schedule=schedules.WarmupCosine(2, 12),
                       backend=backend)  # fmt: skip


def _schedulefree(groups, options, backend):
    opt = fusedlr.AdamWScheduleFree(groups, lr=0.01, **options, max_grad_norm=1.0, backend=backend)
    opt.train()
    return opt


@pytest.fixture
def fused_sgd_calls(monkeypatch):
    """Each call of torch's fused SGD kernel: (tensors, is_first_step)."""
    return _record_calls(monkeypatch, "_fused_sgd_", lambda params, kwargs: (len(params), kwargs["is_first_step"]))


@pytest.mark.parametrize(
    "make, options",
    [(_sgd, o) for o in SGD_CASES.values()] + [(_schedulefree, o) for o in SCHEDULEFREE_CASES.values()],
    ids=[f"sgd-{k}" for k in SGD_CASES] + [f"schedulefree-{k}" for k in SCHEDULEFREE_CASES],
)
def test_sgd_and_schedulefree_multi_tensor_steps_match_the_reference(monkeypatch, make, options):
    """torch's fused SGD kernel and Schedule-Free's foreach ops against the torch backend: two
    groups (AGC on one), an active clip, tensors in both the one-thread and the all-thread part,
    a large one in blocks, a gapped param, grads laid out unlike their params at odd steps, and a
    param whose first grad comes at step 3 (its momentum buffer is first written while the
    others' are not). Not to the bit: the fused SGD kernel rounds its vector loop's tail
    elements differently, and Schedule-Free moves the bias correction out of the denominator."""
    monkeypatch.setattr(_cpu_updates, "SERIAL_NUMEL", 16)
    monkeypatch.setattr(_cpu_updates, "BLOCK_NUMEL", 1000)
    base = make_params(AWKWARD_SHAPES + [(3000, 2), (6, 5)])
    grads = _mislaid(make_grads(base, STEPS, scale=3.0, skip=lambda step, i: i == 2 and step < 3))
    runs = []
    for backend in ("torch", "cpu"):
        params = _with_gaps(base)
        groups = [dict(params=params[:6], agc_clip_factor=0.05), dict(params=params[6:], lr=0.02)]
        opt = make(groups, options, backend)
        runs.append((opt, params, run_steps(opt, params, grads)))
    (ref, ref_params, ref_norms), (opt, params, norms) = runs
    assert isinstance(opt._plan_cache, _cpu.CpuPlan) and opt._plan_cache.fast
    assert_states_close(opt, params, ref, ref_params, **FP32_TOL)
    torch.testing.assert_close(torch.stack(norms), torch.stack(ref_norms), rtol=1e-6, atol=0)
    assert torch.equal(norms[0], ref_norms[0])  # the same params: the same norm, to the bit


def test_sgd_runs_the_fused_kernel_and_copies_the_first_grad_in(fused_sgd_calls):
    """Buffers never written take the kernel's first-step copy, the others its update: here the
    param without a grad at the first step is first written at the second."""
    base = make_params([(4097,), (30, 7), (5,)])
    grads = make_grads(base, 3, skip=lambda step, i: i == 2 and step == 0)
    ours = clone_params(base)
    opt = fusedlr.SGD(ours, lr=0.1, momentum=0.9, weight_decay=0.1, backend="cpu")
    run_steps(opt, ours, grads)
    theirs = clone_params(base)
    ref, _ = run_by_hand(lambda groups: torch.optim.SGD(groups, foreach=False), theirs,
                         [dict(params=[0, 1, 2], lr=0.1, momentum=0.9, weight_decay=0.1)], grads)  # fmt: skip
    for a, b in zip(ours, theirs):  # torch's SGD keeps no step count: params and buffers only
        torch.testing.assert_close(a, b, **FP32_TOL)
        torch.testing.assert_close(opt.state[a]["momentum_buffer"], ref.state[b]["momentum_buffer"], **FP32_TOL)
    # step 1: two buffers copied in; step 2: two updated, one copied in; step 3: three updated
    first_calls = [call for call in fused_sgd_calls if call[1]]
    assert sum(n for n, _ in first_calls) == 3
    assert sum(n for n, first in fused_sgd_calls if not first) == 2 + 3


def test_agc_and_norm_reporting_stay_on_the_multi_tensor_path(fused_adamw_calls):
    """AGC in one group (its norm is reported on every step, also when only the other group has
    grads) does not send the step to the reference."""
    params = make_params()
    groups = [dict(params=params[:4], agc_clip_factor=0.05), dict(params=params[4:])]
    opt = fusedlr.AdamW(groups, backend="cpu")
    for grads in make_grads(params, 2, skip=lambda step, i: step == 1 and i < 4):
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        assert opt.last_grad_norm is not None
    assert fused_adamw_calls == [4, len(params) - 4, len(params) - 4]


@pytest.mark.parametrize("cls", [fusedlr.AdamW, fusedlr.Lion, fusedlr.SGD, fusedlr.AdamWScheduleFree])
def test_the_step_keeps_no_grad_alive(monkeypatch, cls):
    """Nothing the plan caches refers to a grad: after ``zero_grad()`` last step's grads are
    freed (else a set of grads would stay allocated through the next backward pass)."""
    import gc
    import weakref

    monkeypatch.setattr(_cpu_updates, "BLOCK_NUMEL", 1000)  # the large tensor cut in chunks
    params = make_params([(3000, 2), (5,), (7, 3)])
    opt = cls(params, lr=1e-2, backend="cpu")  # no clip: the kernels get the grads themselves
    if cls is fusedlr.AdamWScheduleFree:
        opt.train()
    for grads in make_grads(params, 2):
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
    refs = [weakref.ref(p.grad) for p in params]
    opt.zero_grad(set_to_none=True)
    del grads, g
    gc.collect()
    assert opt._plan_cache.fast and all(ref() is None for ref in refs)


@pytest.mark.parametrize("cls", [fusedlr.AdamW, fusedlr.SGD])
def test_integer_step_counts_step_as_on_the_torch_backend(cls):
    """A ``step`` loaded or set as an integer tensor (torch accepts it) is counted, not refused
    half-way through an update (review finding)."""
    runs = []
    for backend in ("torch", "cpu"):
        params = make_params([(10,), (4, 3)])
        opt = cls(params, lr=0.1, **({"momentum": 0.9} if cls is fusedlr.SGD else {}), backend=backend)
        grads = make_grads(params, 3)
        run_steps(opt, params, grads[:1])
        opt.state[params[0]]["step"] = torch.tensor(1)
        run_steps(opt, params, grads[1:])
        runs.append((opt, params))
    (ref, ref_params), (opt, params) = runs
    assert_states_close(opt, params, ref, ref_params, **FP32_TOL)
    assert opt.state[params[0]]["step"].dtype == torch.int64 and int(opt.state[params[0]]["step"]) == 3


def test_tensor_lr_with_a_schedule_is_computed_in_float64(monkeypatch):
    """The lr handed to the fused kernel is the reference's: a tensor lr read on the host and
    scaled in float64 (review finding: it was scaled in the tensor's float32)."""
    params = make_params([(10,)])
    opt = fusedlr.SGD(params, lr=torch.tensor(0.05), momentum=0.9, schedule=schedules.WarmupCosine(2, 12),
                      backend="cpu")  # fmt: skip
    seen = _record_calls(monkeypatch, "_fused_sgd_", lambda params, kwargs: kwargs["lr"])
    run_steps(opt, params, make_grads(params, 3))
    scale, offset = schedules.WarmupCosine(2, 12).scale_offset(2)
    assert seen[-1] == float(torch.tensor(0.05)) * scale + offset


@pytest.mark.parametrize("agc", [None, 0.05], ids=["clip", "agc+clip"])
@pytest.mark.parametrize(
    "cls, options",
    [(fusedlr.AdamW, dict(amsgrad=True)), (fusedlr.AdamW, dict(maximize=True)), (fusedlr.SGD, dict(momentum=0.9)),
     (fusedlr.SGD, dict(momentum=0.0, weight_decay=0.1))],
    ids=["adamw-amsgrad", "adamw-maximize", "sgd-momentum", "sgd-plain"],
)  # fmt: skip
def test_active_clip_scales_chunk_by_chunk(monkeypatch, cls, options, agc):
    """An active clip (and AGC) multiplies each chunk of the grads into a copy just before the
    fused kernel reads it: the kernels then run chunk by chunk (here chunks of 1,000 elements,
    the 6,000-element tensor in six blocks), with the torch backend's results and ``.grad``
    untouched. A param whose first grad comes late takes SGD's first-step copy in its chunk."""
    monkeypatch.setattr(_cpu_updates, "SERIAL_NUMEL", 16)
    monkeypatch.setattr(_cpu_updates, "SGD_SERIAL_NUMEL", 16)
    monkeypatch.setattr(_cpu_updates, "BLOCK_NUMEL", 1000)
    calls = []
    for name in ("_fused_adamw_", "_fused_sgd_"):
        _record_calls(monkeypatch, name, lambda params, kwargs: len(params), calls)
    base = make_params(AWKWARD_SHAPES + [(3000, 2)])
    grads = make_grads(base, 6, scale=5.0, skip=lambda step, i: i == 1 and step < 2)
    runs = []
    for backend in ("torch", "cpu"):
        params = clone_params(base)
        opt = cls(params, lr=1e-2, max_grad_norm=0.5, agc_clip_factor=agc, backend=backend, **options)
        norms = run_steps(opt, params, grads)
        runs.append((opt, params, norms))
    (ref, ref_params, ref_norms), (opt, params, norms) = runs
    assert_states_close(opt, params, ref, ref_params, **FP32_TOL)
    torch.testing.assert_close(torch.stack(norms), torch.stack(ref_norms), rtol=1e-6, atol=0)
    assert len(calls) > 6 * 6  # chunk by chunk: at least the big tensor's six blocks every step
    for p, g in zip(params, grads[-1]):
        assert p.grad is None and g is None or torch.equal(p.grad, g)
