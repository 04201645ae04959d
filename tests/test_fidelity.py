"""Drop-in fidelity: the torch.optim behaviours users rely on, on every backend (issue 11).

Each test names the item of the issue it guards. "Unchanged" means params, every state tensor,
the param groups and the schedule counter, compared before and after a refused call.
"""

import copy
import pickle
import warnings

import numpy as np
import pytest
import torch
from helpers import FP32_TOL, assert_states_close, clone_params, make_grads, make_params, run_steps
from unchanged import assert_unchanged, snapshot

import fusedlr
from fusedlr import schedules as S


def trained(backend, cls=fusedlr.AdamW, shapes=((4,), (3, 2), (5,)), steps=2, **kw):
    params = make_params(list(shapes))
    opt = cls(params, lr=0.1, max_grad_norm=1.0, backend=backend, **kw)
    run_steps(opt, params, make_grads(params, steps))
    return params, opt


def set_grads(params, seed=5):
    for p, g in zip(params, make_grads(params, 1, seed=seed)[0]):
        p.grad = g


# ----- 1 and 5: foreign, partial and malformed states: a clear error, nothing touched ----------


def foreign_state_dicts(params):
    """State dicts of other optimizers over the same params, after one step each."""
    out = {}
    for name, make in [
        ("fusedlr.Lion", lambda ps: fusedlr.Lion(ps, backend="torch")),
        ("torch.optim.SGD", lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9)),
        ("torch.optim.Adagrad", lambda ps: torch.optim.Adagrad(ps)),
    ]:
        ps = clone_params(params)
        other = make(ps)
        set_grads(ps)
        other.step()
        out[name] = other.state_dict()
    lion_pytorch = pytest.importorskip("lion_pytorch")
    ps = clone_params(params)
    other = lion_pytorch.Lion(ps)
    set_grads(ps)
    other.step()
    out["lion_pytorch.Lion"] = other.state_dict()
    return out


def test_foreign_state_dict_is_refused_at_load_and_changes_nothing(backend):
    params, opt = trained(backend)
    for state_dict in foreign_state_dicts(params).values():
        before = snapshot(opt)
        with pytest.raises(KeyError, match="lacks 'step'|lacks 'exp_avg'"):
            opt.load_state_dict(state_dict)
        assert_unchanged(opt, before)
    set_grads(params)
    opt.step()  # still a working optimizer


@pytest.mark.parametrize("key", ["exp_avg", "exp_avg_sq", "step"])
def test_state_missing_an_entry_fails_the_step_before_any_change(backend, key):
    params, opt = trained(backend)
    del opt.state[params[-1]][key]  # the last param: earlier ones must not be updated either
    set_grads(params)
    before = snapshot(opt)
    with pytest.raises(KeyError, match=f"lacks '{key}'"):
        opt.step()
    assert_unchanged(opt, before)


def test_lion_state_missing_exp_avg_fails_before_any_change(backend):
    params, opt = trained(backend, fusedlr.Lion)
    state = opt.state[params[-1]]
    state["momentum_buffer"] = state.pop("exp_avg")  # an SGD-like state (an empty one starts afresh)
    set_grads(params)
    before = snapshot(opt)
    with pytest.raises(KeyError, match="lacks 'exp_avg'"):
        opt.step()
    assert_unchanged(opt, before)


def test_step_of_two_elements_fails_before_any_change(backend):
    params, opt = trained(backend)
    opt.state[params[-1]]["step"] = torch.tensor([1.0, 1.0])
    set_grads(params)
    before = snapshot(opt)
    with pytest.raises(RuntimeError, match="one-element"):
        opt.step()
    assert_unchanged(opt, before)


def test_expanded_param_fails_before_any_change(backend):
    good = torch.nn.Parameter(torch.randn(4))
    expanded = torch.nn.Parameter(torch.zeros(1).expand(3))
    opt = fusedlr.AdamW([good, expanded], lr=0.1, backend=backend)
    good.grad, expanded.grad = torch.ones(4), torch.ones(3)
    before = snapshot(opt)
    with pytest.raises(RuntimeError, match="share memory|gaps"):
        opt.step()
    assert_unchanged(opt, before)
    assert not opt.state  # no state was created either


# ----- 2: a param listed twice -------------------------------------------------------------------


@pytest.mark.parametrize("cls", [fusedlr.AdamW, fusedlr.Lion])
def test_param_listed_twice_torch_backend_steps_it_twice_like_torch(cls):
    theirs_cls = torch.optim.AdamW if cls is fusedlr.AdamW else None
    p = torch.nn.Parameter(torch.ones(1))
    with pytest.warns(UserWarning, match="duplicate parameters"):
        opt = cls([p, p], lr=0.1, weight_decay=0.0, backend="torch")
    p.grad = torch.ones(1)
    opt.step()
    if theirs_cls is not None:
        q = torch.nn.Parameter(torch.ones(1))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = theirs_cls([q, q], lr=0.1, weight_decay=0.0, foreach=False)
        q.grad = torch.ones(1)
        theirs.step()
        assert torch.equal(p, q) and float(opt.state[p]["step"]) == float(theirs.state[q]["step"]) == 2.0
        assert p.item() == pytest.approx(0.8)
    else:
        assert p.item() == pytest.approx(0.8)  # two LION steps of lr * sign(g)


def test_param_listed_twice_is_refused_by_the_kernels_before_any_change(triton_backend):
    p, other = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    with pytest.warns(UserWarning, match="duplicate parameters"):
        opt = fusedlr.AdamW([other, p, p], lr=0.1, backend=triton_backend)
    p.grad, other.grad = torch.ones(3), torch.ones(2)
    before = snapshot(opt)
    with pytest.raises(RuntimeError, match="listed twice.*backend='torch'"):
        opt.step()
    assert_unchanged(opt, before)
    assert not opt.state


def test_params_sharing_memory_are_refused_by_the_kernels(triton_backend):
    base = torch.ones(3)
    a, b = torch.nn.Parameter(base), torch.nn.Parameter(base)  # two Parameters, one storage
    opt = fusedlr.AdamW([a, b], lr=0.1, backend=triton_backend)
    a.grad, b.grad = torch.ones(3), torch.ones(3)
    with pytest.raises(RuntimeError, match="share memory"):
        opt.step()
    assert torch.equal(base, torch.ones(3))


# ----- 3: a refused add_param_group leaves no trace ------------------------------------------------


@pytest.mark.parametrize(
    "bad, message",
    [(dict(lr=-1.0), "Invalid learning rate"), (dict(betas=(0.9, 1.5)), "Invalid beta"),
     (dict(state_dtype=torch.float16), "Invalid state_dtype")],
)  # fmt: skip
def test_refused_param_group_is_not_kept(backend, bad, message):
    params, opt = trained(backend)
    c = torch.nn.Parameter(torch.ones(3))
    before = snapshot(opt)
    with pytest.raises(ValueError, match=message):
        opt.add_param_group({"params": [c], **bad})
    assert_unchanged(opt, before)
    c.grad = -torch.ones(3)
    set_grads(params)
    opt.step()
    assert torch.equal(c, torch.ones(3))  # not trained: it is in no group
    opt.add_param_group({"params": [c], "lr": 0.5})  # the corrected retry is accepted
    assert opt.param_groups[-1]["params"] == [c] and opt.param_groups[-1]["lr"] == 0.5


# ----- 4: clipping over a mix of dtypes ------------------------------------------------------------


@pytest.mark.parametrize("first_dtype", [torch.float32, torch.bfloat16])
def test_clipping_over_mixed_dtypes_matches_torch(backend, first_dtype):
    """A 0-dim fp32 or bf16 param beside an fp64 one, clipped: clip_grad_norm_ + torch.optim.AdamW
    (for bf16, the reference steps an fp32 copy of the scalar with the same bf16 grads)."""
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn((), generator=gen).to(first_dtype), torch.randn(5, generator=gen, dtype=torch.float64)]
    ours = [torch.nn.Parameter(t.clone()) for t in tensors]
    theirs = [torch.nn.Parameter(tensors[0].float()), torch.nn.Parameter(tensors[1].clone())]
    opt = fusedlr.AdamW(ours, lr=0.1, max_grad_norm=0.5, backend=backend)
    ref = torch.optim.AdamW(theirs, lr=0.1, foreach=False)
    for _ in range(3):
        grads = [torch.randn((), generator=gen).to(first_dtype), torch.randn(5, generator=gen, dtype=torch.float64)]
        for p, q, g in zip(ours, theirs, grads):
            p.grad, q.grad = g * 3, (g * 3).to(q.dtype)
        opt.step()
        norm = torch.nn.utils.clip_grad_norm_(theirs, 0.5, foreach=False)
        ref.step()
        torch.testing.assert_close(opt.last_grad_norm.double(), norm.double(), rtol=1e-6, atol=0)
    torch.testing.assert_close(ours[1], theirs[1], rtol=1e-6, atol=1e-7)
    if first_dtype == torch.float32:
        torch.testing.assert_close(ours[0], theirs[0], **FP32_TOL)
    else:  # bf16 storage, rounded once per step: within a bf16 ulp or two of the fp32 trajectory
        torch.testing.assert_close(ours[0].float(), theirs[0], rtol=2**-7, atol=0)


# ----- 6: meta tensors ------------------------------------------------------------------------------


def test_meta_params_step_on_the_torch_backend_like_torch():
    params = [torch.nn.Parameter(torch.empty(3, 4, device="meta")), torch.nn.Parameter(torch.empty(5, device="meta"))]
    opt = fusedlr.AdamW(params, max_grad_norm=1.0, backend="torch")
    theirs = torch.optim.AdamW([torch.nn.Parameter(torch.empty_like(p)) for p in params], foreach=False)
    for p, q in zip(params, (q for g in theirs.param_groups for q in g["params"])):
        p.grad, q.grad = torch.empty_like(p), torch.empty_like(q)
    opt.step()
    theirs.step()
    for p in params:
        assert set(opt.state[p]) == {"step", "exp_avg", "exp_avg_sq"}
        assert opt.state[p]["exp_avg"].device.type == "meta" and opt.state[p]["exp_avg"].shape == p.shape
    assert opt.last_grad_norm.device.type == "meta"


def test_meta_params_on_the_triton_backend_are_a_clear_error(triton_backend):
    p = torch.nn.Parameter(torch.empty(3, device="meta"))
    p.grad = torch.empty_like(p)
    with pytest.raises(RuntimeError, match="cannot run on meta"):
        fusedlr.AdamW([p], backend=triton_backend).step()


# ----- 7: deepcopy and pickle ------------------------------------------------------------------------

PUBLIC = ("backend", "grad_attribute", "schedule", "max_grad_norm", "skip_nonfinite", "defaults")


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("cls", [fusedlr.AdamW, fusedlr.Lion])
def test_copies_keep_every_attribute_and_step_identically(backend, how, cls):
    params = make_params([(4,), (3, 2), (5,)])
    opt = cls(params, lr=0.05, max_grad_norm=1.0, agc_clip_factor=0.5, schedule=S.WarmupCosine(2, 10),
              skip_nonfinite=True, backend=backend)  # fmt: skip
    grads = make_grads(params, 5)
    run_steps(opt, params, grads[:3])
    copied = copy.deepcopy(opt) if how == "deepcopy" else pickle.loads(pickle.dumps(opt))
    public = {k for k in opt.__dict__ if not k.startswith("_")}  # torch's test_deepcopy_copies_all_public_attrs
    assert {k for k in copied.__dict__ if not k.startswith("_")} == public
    for name in PUBLIC:
        assert getattr(copied, name) == getattr(opt, name), name
    for name in ("last_grad_norm", "skipped_steps", "_schedule_step"):
        assert torch.equal(getattr(copied, name), getattr(opt, name)), name
    assert copied._host_step == opt._host_step == 3
    assert [{k: v for k, v in g.items() if k != "params"} for g in copied.param_groups] == [
        {k: v for k, v in g.items() if k != "params"} for g in opt.param_groups
    ]
    copied_params = [p for g in copied.param_groups for p in g["params"]]
    assert all(c is not p for c, p in zip(copied_params, params))
    run_steps(opt, params, grads[3:])
    run_steps(copied, copied_params, grads[3:])
    assert_states_close(opt, params, copied, copied_params, rtol=0, atol=0)
    assert torch.equal(copied._schedule_step, opt._schedule_step)
    assert torch.equal(copied.last_grad_norm, opt.last_grad_norm)


def _types_in(value):
    if isinstance(value, dict):
        yield type(value)
        for k, v in value.items():
            yield from _types_in(k)
            yield from _types_in(v)
    elif isinstance(value, (list, tuple)):
        yield type(value)
        for v in value:
            yield from _types_in(v)
    else:
        yield type(value)


def test_state_dict_and_pickled_state_hold_no_fusedlr_type(backend):
    params, opt = trained(backend, schedule=S.WarmupLinear(1, 5))
    modules = {t.__module__ for t in _types_in(opt.state_dict())}
    assert not any(m.startswith("fusedlr") for m in modules), modules
    state = opt.__getstate__()
    assert not any(t.__module__.startswith("fusedlr._state") for t in _types_in(pickle.loads(pickle.dumps(state))))


# ----- 8: load_state_dict keeps the groups as they were ------------------------------------------------


@pytest.mark.parametrize("cls", [fusedlr.AdamW, fusedlr.Lion])
def test_load_state_dict_adds_no_group_key(backend, cls):
    params, opt = trained(backend, cls)
    groups = [dict(g) for g in opt.param_groups]
    opt.load_state_dict(opt.state_dict())
    assert [set(g) for g in opt.param_groups] == [set(g) for g in groups]
    assert "differentiable" not in opt.param_groups[0]
    reloaded = opt.state_dict()["param_groups"]
    opt.load_state_dict(opt.state_dict())
    assert opt.state_dict()["param_groups"] == reloaded


# ----- 9: tensor lr and betas ---------------------------------------------------------------------------


def test_tensor_lr_and_betas_match_torch_and_are_read_every_step(backend):
    params = make_params([(4,), (3, 5), (6,)])
    theirs_params = clone_params(params)
    lr, betas = torch.tensor(0.01), (torch.tensor(0.8), torch.tensor(0.95))
    opt = fusedlr.AdamW(params, lr=lr, betas=betas, weight_decay=0.1, backend=backend)
    t_lr, t_betas = torch.tensor(0.01), (torch.tensor(0.8), torch.tensor(0.95))
    theirs = torch.optim.AdamW(theirs_params, lr=t_lr, betas=t_betas, weight_decay=0.1, foreach=False)
    for step, grads in enumerate(make_grads(params, 4)):
        for tensor_lr in (lr, t_lr):
            tensor_lr.fill_(0.01 * (step + 1))  # as torch's schedulers update a tensor lr: in place
        run_steps(opt, params, [grads])
        run_steps(theirs, theirs_params, [grads])
    assert opt.param_groups[0]["lr"] is lr  # kept as given, as torch keeps it
    assert_states_close(opt, params, theirs, theirs_params)


def test_tensor_lr_with_a_torch_scheduler(backend):
    params = make_params([(4,), (7,)])
    theirs_params = clone_params(params)
    opt = fusedlr.Lion(params, lr=torch.tensor(0.01), backend=backend)
    ref = fusedlr.Lion(theirs_params, lr=0.01, backend="torch")  # float lr, same scheduler
    scheds = [torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5) for o in (opt, ref)]
    for grads in make_grads(params, 3):
        run_steps(opt, params, [grads])
        run_steps(ref, theirs_params, [grads])
        for s in scheds:
            s.step()
    assert torch.is_tensor(opt.param_groups[0]["lr"])
    assert_states_close(opt, params, ref, theirs_params)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(lr=torch.tensor([0.1, 0.2])), ValueError, "Tensor lr must be a 1-element"),
        (dict(lr=torch.tensor(-0.1)), ValueError, "Invalid learning rate: -0.1"),
        (dict(lr=torch.tensor(1)), ValueError, "Tensor lr must be a 1-element floating-point"),
        (dict(betas=(torch.tensor(1.5), 0.9)), ValueError, "Invalid beta parameter at index 0: 1.5"),
        (dict(weight_decay=torch.tensor(0.1)), ValueError, "only lr and betas may be tensors"),
        (dict(eps=torch.tensor(1e-8)), ValueError, "only lr and betas may be tensors"),
    ],
)
def test_tensor_hyperparameter_errors_are_accurate(kwargs, error, message):
    with pytest.raises(error, match=message):
        fusedlr.AdamW([torch.nn.Parameter(torch.zeros(2))], **kwargs)


def test_valid_tensor_lr_is_not_called_invalid():
    opt = fusedlr.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=torch.tensor(0.01))
    assert torch.is_tensor(opt.param_groups[0]["lr"])


# ----- 10: a non-tensor in grad_attribute -----------------------------------------------------------------


@pytest.mark.parametrize("bad", [[1.0, 2.0, 3.0], np.ones(3), 1.0])
def test_non_tensor_grad_attribute_is_a_runtime_error_every_step(backend, bad):
    p = torch.nn.Parameter(torch.ones(3))
    opt = fusedlr.AdamW([p], grad_attribute="main_grad", backend=backend)
    p.main_grad = torch.ones(3)
    opt.step()  # a good step first: its cached checks must not let the bad grad through
    p.main_grad = bad
    before = snapshot(opt)
    for _ in range(2):
        with pytest.raises(RuntimeError, match="main_grad of a parameter is a"):
            opt.step()
    assert_unchanged(opt, before)


# ----- 11: composites of relative schedules --------------------------------------------------------------


def test_sequential_of_relative_schedules_is_relative():
    from oracles import hf_cosine

    schedule = S.Sequential([S.WarmupCosine(20, 100), S.WarmupCosine(10, 50)], [100])
    first, second = hf_cosine(20, 100), hf_cosine(10, 50)
    for k in range(0, 160, 7):
        expected = first(k) if k < 100 else second(k - 100)
        assert schedule(k) == pytest.approx(expected, rel=1e-12, abs=1e-15)
    param = torch.nn.Parameter(torch.zeros(1))
    sched = torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD([param], lr=1.0), schedule)
    assert sched.get_last_lr() == [0.0]
    chained = S.Chained([schedule, S.Exponential(0.99)])
    assert chained(105) == pytest.approx(second(5) * 0.99**105, rel=1e-12)


def test_sequential_of_an_absolute_piece_still_has_no_multiplier():
    schedule = S.Sequential([S.WarmupCosine(2, 10), S.CosineAnnealing(10, eta_min=1e-4)], [10])
    with pytest.raises(ValueError, match="absolute"):
        schedule(0)


# ----- 12: the schedule length bound, checked at construction ---------------------------------------------


def test_too_long_composite_is_refused_when_built():
    from fusedlr.schedules.program import MAX_INSTRUCTIONS

    pieces = [S.WarmupCosine(5 + i, 50 + i) for i in range(30)]
    with pytest.raises(ValueError, match=f"schedule too complex: .*at most {MAX_INSTRUCTIONS}"):
        S.Sequential(pieces, list(range(10, 300, 10)))
    deep = S.Exponential(0.999)
    with pytest.raises(ValueError, match="schedule too complex"):
        for i in range(50):  # 6 instructions a level
            deep = S.Chained([deep, S.Step(10 + i, 0.9)])


def test_too_long_custom_schedule_is_refused_by_the_optimizer_constructor():
    from fusedlr.schedules import program as P

    class Long(S.Schedule):
        def expressions(self, k):
            x = k
            for i in range(300):
                x = x * 1.0001 + i
            return P.lift(1.0) + 0 * x, P.lift(0.0)

    with pytest.raises(ValueError, match="schedule too complex"):
        fusedlr.AdamW([torch.nn.Parameter(torch.zeros(2))], schedule=Long())


def test_a_composite_within_the_bound_steps_on_every_backend(backend):
    pieces = [S.WarmupCosine(5, 20) for _ in range(6)]
    schedule = S.Sequential(pieces, [20, 40, 60, 80, 100])
    params = make_params([(3,)])
    opt = fusedlr.AdamW(params, lr=0.1, schedule=schedule, backend=backend)
    run_steps(opt, params, make_grads(params, 2))
    assert int(opt._schedule_step) == 2


# ----- 13: Cyclic exp_range and last_grad_norm with AGC -------------------------------------------------


def test_cyclic_exp_range_with_growing_gamma_is_refused():
    with pytest.raises(ValueError, match="gamma <= 1"):
        S.Cyclic(1e-3, 1e-1, 10, mode="exp_range", gamma=1.01)
    S.Cyclic(1e-3, 1e-1, 10, mode="exp_range", gamma=1.0)
    S.Cyclic(1e-3, 1e-1, 10, mode="triangular", gamma=1.5)  # gamma is unused there, as in torch


def test_last_grad_norm_is_reported_when_agc_is_configured_elsewhere(backend):
    with_agc, without = make_params([(4,)]), make_params([(3, 2), (5,)], seed=3)
    opt = fusedlr.AdamW([{"params": with_agc, "agc_clip_factor": 0.1}, {"params": without}], lr=0.1, backend=backend)
    set_grads(with_agc + without)
    opt.step()
    assert opt.last_grad_norm is not None
    for p in with_agc:
        p.grad = None  # only the group without AGC has grads this step
    opt.step()
    assert opt.last_grad_norm is not None
    expected = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in without]))
    torch.testing.assert_close(opt.last_grad_norm, expected, rtol=1e-6, atol=0)


# ----- messages: a valid-looking value is never shown as if it were the number ---------------------


def test_messages_quote_what_is_not_a_number():
    with pytest.raises(ValueError, match=r"Invalid learning rate: '0\.1'"):
        fusedlr.AdamW([torch.nn.Parameter(torch.zeros(2))], lr="0.1")


def test_group_count_mismatch_is_torchs_message(backend):
    params, opt = trained(backend)
    state_dict = opt.state_dict()
    state_dict["param_groups"].append({"params": []})
    with pytest.raises(ValueError, match="different number of parameter groups"):
        opt.load_state_dict(state_dict)
    state_dict = opt.state_dict()
    state_dict["param_groups"][0]["params"] = state_dict["param_groups"][0]["params"][:-1]
    with pytest.raises(ValueError, match="doesn't match the size of optimizer's group"):
        opt.load_state_dict(state_dict)


@pytest.mark.parametrize("key, value", [("lr", "0.1"), ("lr", None), ("betas", (0.9, "x")), ("weight_decay", [0.1])])
def test_group_value_written_by_hand_is_refused_before_any_change(backend, key, value):
    params, opt = trained(backend)
    opt.param_groups[0][key] = value
    set_grads(params)
    before = snapshot(opt)
    with pytest.raises(ValueError, match="Invalid"):
        opt.step()
    assert_unchanged(opt, before)


def test_bad_group_value_on_a_first_step_creates_no_state(backend):
    params = make_params([(3,), (4,)])
    opt = fusedlr.AdamW(params, lr=0.1, backend=backend)
    opt.param_groups[0]["lr"] = "fast"
    set_grads(params)
    with pytest.raises(ValueError, match="Invalid learning rate: 'fast'"):
        opt.step()
    assert not opt.state


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copy_with_a_torch_scheduler_attached_steps_itself(backend, how):
    """A torch LR scheduler sets a ``step`` wrapper on the optimizer that holds a weak reference
    to it: a copy must not keep that wrapper (it would step the original), as torch's copy does not."""
    params = make_params([(4,), (3, 2)])
    opt = fusedlr.AdamW(params, lr=0.05, backend=backend)
    torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    before = [p.detach().clone() for p in params]
    copied = copy.deepcopy(opt) if how == "deepcopy" else pickle.loads(pickle.dumps(opt))
    copied_params = [p for g in copied.param_groups for p in g["params"]]
    for p in copied_params:
        p.grad = torch.ones_like(p)
    copied.step()
    assert int(copied._schedule_step) == 1 and int(opt._schedule_step) == 0
    assert all(torch.equal(p.detach(), b) for p, b in zip(params, before))
    assert not any(torch.equal(p.detach(), b) for p, b in zip(copied_params, before))
