"""fusedlr.SGD against torch.optim.SGD(foreach=False) + clip_grad_norm_ + LambdaLR, step by step."""

import copy
import io

import pytest
import torch
from helpers import FP32_TOL, clone_params, make_grads, make_params, run_steps
from oracles import hf_cosine, run_by_hand

import fusedlr
from fusedlr import schedules

STEPS = 9


def assert_sgd_close(opt, ours, ref, theirs, **tol):
    """Params and momentum buffers as torch's; fusedlr's extra ``step`` counts the buffer's updates."""
    tol = tol or FP32_TOL
    for i, (pa, pb) in enumerate(zip(ours, theirs)):
        torch.testing.assert_close(pa, pb, **tol, msg=lambda m, i=i: f"param {i}: {m}")
        sa, sb = opt.state.get(pa, {}), ref.state.get(pb, {})
        assert ("momentum_buffer" in sa) == ("momentum_buffer" in sb), f"param {i}: {sorted(sa)} vs {sorted(sb)}"
        assert set(sa) <= {"momentum_buffer", "step"}
        if "momentum_buffer" in sb:
            torch.testing.assert_close(sa["momentum_buffer"], sb["momentum_buffer"], **tol)


HYPERS = [
    dict(momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0),
    dict(momentum=0.9, dampening=0.0, nesterov=False, weight_decay=0.01),
    dict(momentum=0.8, dampening=0.3, nesterov=False, weight_decay=0.05),
    dict(momentum=0.9, dampening=0.0, nesterov=True, weight_decay=0.1),
]


@pytest.mark.parametrize("hypers", HYPERS, ids=["plain", "momentum+wd", "dampening", "nesterov"])
@pytest.mark.parametrize("maximize", [False, True])
def test_sgd_matches_torch(backend, hypers, maximize):
    """Two groups, awkward shapes, grads missing at some steps, a device schedule and the clip."""
    base = make_params()
    grads = make_grads(base, STEPS, skip=lambda step, i: i == 4 and step % 3 == 0)
    spec = [
        dict(params=[0, 1, 2, 3], lr=0.05, maximize=maximize, **hypers),
        dict(params=[4, 5, 6, 7, 8, 9], lr=0.02, maximize=maximize, momentum=0.5, dampening=0.1, weight_decay=0.0),
    ]
    ours = clone_params(base)
    opt = fusedlr.SGD([dict(g, params=[ours[i] for i in g["params"]]) for g in spec], max_grad_norm=2.0,
                      schedule=schedules.WarmupCosine(3, 10), backend=backend)  # fmt: skip
    norms = run_steps(opt, ours, grads)
    theirs = clone_params(base)
    ref, ref_norms = run_by_hand(lambda groups: torch.optim.SGD(groups, foreach=False), theirs, spec, grads,
                                 lr_lambda=hf_cosine(3, 10), max_grad_norm=2.0)  # fmt: skip
    assert_sgd_close(opt, ours, ref, theirs)
    torch.testing.assert_close(torch.stack(norms), torch.stack(ref_norms), rtol=1e-5, atol=0)


def test_sgd_decoupled_weight_decay(backend):
    """decoupled_weight_decay: p *= 1 - lr * wd, then torch's SGD step without decay."""
    base = make_params()
    grads = make_grads(base, STEPS)
    lr, wd = 0.05, 0.2
    ours = clone_params(base)
    opt = fusedlr.SGD(ours, lr=lr, momentum=0.9, weight_decay=wd, decoupled_weight_decay=True, backend=backend)
    run_steps(opt, ours, grads)
    theirs = clone_params(base)
    ref = torch.optim.SGD(theirs, lr=lr, momentum=0.9, foreach=False)
    for step_grads in grads:
        with torch.no_grad():
            for p, g in zip(theirs, step_grads):
                p.grad = g.clone()
                p.mul_(1 - lr * wd)
        ref.step()
    assert_sgd_close(opt, ours, ref, theirs)


def test_sgd_agc_and_clip_value(backend):
    base = make_params()
    grads = make_grads(base, STEPS, scale=3.0)
    spec = [dict(params=list(range(len(base))), lr=0.03, momentum=0.9, agc_clip_factor=0.05)]
    ours = clone_params(base)
    opt = fusedlr.SGD(ours, lr=0.03, momentum=0.9, agc_clip_factor=0.05, max_grad_norm=2.0, backend=backend)
    run_steps(opt, ours, grads)
    theirs = clone_params(base)
    ref, _ = run_by_hand(lambda groups: torch.optim.SGD(groups, foreach=False), theirs, spec, grads, max_grad_norm=2.0)
    assert_sgd_close(opt, ours, ref, theirs)

    ours = clone_params(base)
    opt = fusedlr.SGD(ours, lr=0.03, momentum=0.9, clip_value=1.5, backend=backend)
    run_steps(opt, ours, grads)
    theirs = clone_params(base)
    ref = torch.optim.SGD(theirs, lr=0.03, momentum=0.9, foreach=False)
    for step_grads in grads:
        for p, g in zip(theirs, step_grads):
            p.grad = g.clone()
        torch.nn.utils.clip_grad_value_(theirs, 1.5)
        ref.step()
    assert_sgd_close(opt, ours, ref, theirs)


def test_sgd_skipped_first_step_keeps_the_buffer_unwritten(backend):
    """A non-finite first step is skipped on the device; the next one still starts the buffer
    as a copy of the grad (with dampening, torch's clone differs from a damped update)."""
    base = make_params()
    grads = make_grads(base, 5)
    bad = [g.clone().fill_(float("inf")) if i == 1 else g for i, g in enumerate(grads[0])]
    ours = clone_params(base)
    opt = fusedlr.SGD(ours, lr=0.05, momentum=0.9, dampening=0.5, skip_nonfinite=True, backend=backend)
    run_steps(opt, ours, [bad] + grads[1:])
    assert int(opt.skipped_steps) == 1
    theirs = clone_params(base)
    ref = torch.optim.SGD(theirs, lr=0.05, momentum=0.9, dampening=0.5, foreach=False)
    run_steps(ref, theirs, grads[1:])
    assert_sgd_close(opt, ours, ref, theirs)


def test_sgd_state_dicts_load_both_ways(backend):
    base = make_params()
    grads = make_grads(base, 8)
    hypers = dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01)
    ours, theirs = clone_params(base), clone_params(base)
    opt = fusedlr.SGD(ours, backend=backend, **hypers)
    ref = torch.optim.SGD(theirs, foreach=False, **hypers)
    run_steps(opt, ours, grads[:4])
    run_steps(ref, theirs, grads[:4])
    # fusedlr -> torch and torch -> fusedlr, then both continue (deep copies: a loaded state dict's
    # tensors are the optimizer's own, in torch as here).
    ours2, theirs2 = clone_params(ours), clone_params(theirs)
    into_torch = torch.optim.SGD(ours2, foreach=False, **hypers)
    into_torch.load_state_dict(copy.deepcopy(opt.state_dict()))
    into_ours = fusedlr.SGD(theirs2, backend=backend, **hypers)
    into_ours.load_state_dict(copy.deepcopy(ref.state_dict()))
    for o, p in ((opt, ours), (ref, theirs), (into_torch, ours2), (into_ours, theirs2)):
        run_steps(o, p, grads[4:])
    assert_sgd_close(into_ours, theirs2, ref, theirs)
    assert_sgd_close(opt, ours, into_torch, ours2)
    # weights_only round trip
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    assert set(loaded["state"][0]) == {"momentum_buffer", "step"}


def test_sgd_bf16_master_weights_follow_fp32_sgd(backend):
    """bf16 params with an fp32 master copy: the master is torch's fp32 SGD on the grads."""
    base = make_params(dtype=torch.bfloat16)
    grads = make_grads(base, 6)
    ours = clone_params(base)
    opt = fusedlr.SGD(ours, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01, master_weights=True,
                      max_grad_norm=3.0, backend=backend)  # fmt: skip
    run_steps(opt, ours, grads)
    theirs = [p.detach().float().requires_grad_() for p in base]
    fp32_grads = [[g.float() for g in step] for step in grads]
    ref, _ = run_by_hand(lambda groups: torch.optim.SGD(groups, foreach=False), theirs,
                         [dict(params=list(range(len(base))), lr=0.05, momentum=0.9, nesterov=True,
                               weight_decay=0.01)], fp32_grads, max_grad_norm=3.0)  # fmt: skip
    for p, q in zip(ours, theirs):
        state = opt.state[p]
        torch.testing.assert_close(state["master_param"], q.detach(), **FP32_TOL)
        torch.testing.assert_close(state["momentum_buffer"], ref.state[q]["momentum_buffer"], **FP32_TOL)
        assert state["momentum_buffer"].dtype == torch.float32
        torch.testing.assert_close(p.detach(), q.detach().bfloat16(), rtol=2**-7, atol=0)


def test_sgd_validation_matches_torch():
    p = torch.nn.Parameter(torch.zeros(3))
    for kwargs in (dict(lr=-1.0), dict(momentum=-0.1), dict(weight_decay=-1.0), dict(nesterov=True),
                   dict(nesterov=True, momentum=0.9, dampening=0.1)):  # fmt: skip
        with pytest.raises(ValueError) as ours:
            fusedlr.SGD([p], **kwargs)
        with pytest.raises(ValueError) as theirs:
            torch.optim.SGD([p], **kwargs)
        assert str(ours.value) == str(theirs.value)
    defaults = fusedlr.SGD([p]).defaults
    for key, value in torch.optim.SGD([p]).defaults.items():
        if key in defaults:
            assert defaults[key] == value, key


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_sgd_dcp_checkpoint_resumes(tmp_path, backend):
    """torch.distributed.checkpoint (one process): the buffer and its step travel; both continue alike."""
    dcp = pytest.importorskip("torch.distributed.checkpoint")
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    twin = copy.deepcopy(model)
    hypers = dict(lr=0.05, momentum=0.9, dampening=0.2, backend=backend)
    opt = fusedlr.SGD(model.parameters(), **hypers)
    for _ in range(3):
        model(torch.randn(5, 4)).sum().backward()
        opt.step()
        opt.zero_grad()
    dcp.save({"optim": get_optimizer_state_dict(model, opt)}, checkpoint_id=str(tmp_path))
    twin.load_state_dict(model.state_dict())
    resumed = fusedlr.SGD(twin.parameters(), **hypers)
    state = {"optim": get_optimizer_state_dict(twin, resumed)}
    dcp.load(state, checkpoint_id=str(tmp_path))
    set_optimizer_state_dict(twin, resumed, state["optim"])
    assert all(float(s["step"]) == 3 for s in resumed.state.values())
    batch = torch.randn(5, 4)
    for o, m in ((opt, model), (resumed, twin)):
        m(batch).sum().backward()
        o.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_sgd_momentum_edited_between_steps(backend):
    """Momentum switched on, off and on again in param_groups: torch makes the buffer when
    momentum first becomes non-zero, ignores it while momentum is 0, and resumes it after."""
    base = make_params()
    grads = make_grads(base, 6)
    ours, theirs = clone_params(base), clone_params(base)
    opt = fusedlr.SGD(ours, lr=0.05, dampening=0.2, backend=backend)
    ref = torch.optim.SGD(theirs, lr=0.05, dampening=0.2, foreach=False)
    for momentum, step_grads in zip([0.0, 0.9, 0.9, 0.0, 0.5, 0.5], grads):
        for o in (opt, ref):
            o.param_groups[0]["momentum"] = momentum
        run_steps(opt, ours, [step_grads])
        run_steps(ref, theirs, [step_grads])
    assert_sgd_close(opt, ours, ref, theirs)
