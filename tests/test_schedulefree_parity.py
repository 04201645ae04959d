"""fusedlr.AdamWScheduleFree against the schedulefree package's AdamWScheduleFree, step by step."""

import copy
import io

import pytest
import torch
from helpers import FP32_TOL, assert_states_close, clone_params, make_grads, make_params, run_steps
from oracles import run_by_hand

import fusedlr

schedulefree = pytest.importorskip("schedulefree")

STEPS = 9


def package(groups, **kwargs):
    opt = schedulefree.AdamWScheduleFree(groups, **kwargs)
    opt.train()
    return opt


def assert_sf_close(opt, ours, ref, theirs, **tol):
    assert_states_close(opt, ours, ref, theirs, **tol)  # the package keeps no "step": z and v compared
    for ours_group, ref_group in zip(opt.state_dict()["param_groups"], ref.state_dict()["param_groups"]):
        for key in ("k", "lr_max", "weight_sum", "scheduled_lr"):
            assert ours_group[key] == pytest.approx(ref_group[key], rel=1e-12), key


HYPERS = [
    dict(warmup_steps=0, weight_decay=0.0, r=0.0, weight_lr_power=2.0),
    dict(warmup_steps=4, weight_decay=0.1, r=0.0, weight_lr_power=2.0),
    dict(warmup_steps=3, weight_decay=0.01, r=1.0, weight_lr_power=1.0, betas=(0.95, 0.99)),
    dict(warmup_steps=2, weight_decay=0.0, r=0.5, weight_lr_power=0.0, eps=1e-6),
]


@pytest.mark.parametrize("hypers", HYPERS, ids=["plain", "warmup+wd", "r=1", "r=0.5"])
def test_schedulefree_matches_the_package(backend, hypers):
    """Two groups, awkward shapes, grads missing at some steps, the fused clip; then eval()."""
    base = make_params()
    grads = make_grads(base, STEPS, skip=lambda step, i: i == 4 and step % 3 == 0)
    spec = [
        dict(params=[0, 1, 2, 3], lr=0.01, **hypers),
        dict(params=[4, 5, 6, 7, 8, 9], lr=0.003, warmup_steps=1, weight_decay=0.02),
    ]
    ours = clone_params(base)
    opt = fusedlr.AdamWScheduleFree([dict(g, params=[ours[i] for i in g["params"]]) for g in spec],
                                    max_grad_norm=3.0, backend=backend)  # fmt: skip
    opt.train()
    norms = run_steps(opt, ours, grads)
    theirs = clone_params(base)
    ref, ref_norms = run_by_hand(package, theirs, spec, grads, max_grad_norm=3.0)
    assert_sf_close(opt, ours, ref, theirs)
    torch.testing.assert_close(torch.stack(norms), torch.stack(ref_norms), rtol=1e-5, atol=0)
    opt.eval()
    ref.eval()
    assert_sf_close(opt, ours, ref, theirs)
    opt.train()
    ref.train()
    assert_sf_close(opt, ours, ref, theirs)


def test_schedulefree_agc_and_clip_value(backend):
    base = make_params()
    grads = make_grads(base, STEPS, scale=3.0)
    spec = [dict(params=list(range(len(base))), lr=0.01, warmup_steps=2, agc_clip_factor=0.05)]
    ours = clone_params(base)
    opt = fusedlr.AdamWScheduleFree(ours, lr=0.01, warmup_steps=2, agc_clip_factor=0.05, backend=backend)
    opt.train()
    run_steps(opt, ours, grads)
    theirs = clone_params(base)
    ref, _ = run_by_hand(package, theirs, spec, grads)
    assert_sf_close(opt, ours, ref, theirs)

    ours = clone_params(base)
    opt = fusedlr.AdamWScheduleFree(ours, lr=0.01, clip_value=1.0, maximize=True, backend=backend)
    opt.train()
    run_steps(opt, ours, grads)
    theirs = clone_params(base)
    ref = package(theirs, lr=0.01)
    for step_grads in grads:
        for p, g in zip(theirs, step_grads):
            p.grad = -g.clone()  # the package has no maximize: it descends on -grad
        torch.nn.utils.clip_grad_value_(theirs, 1.0)
        ref.step()
    assert_sf_close(opt, ours, ref, theirs)


def test_schedulefree_step_in_eval_mode_raises_and_changes_nothing(backend):
    params = make_params([(3,), (2, 2)])
    opt = fusedlr.AdamWScheduleFree(params, backend=backend)
    for p in params:
        p.grad = torch.ones_like(p)
    before = [p.detach().clone() for p in params]
    with pytest.raises(RuntimeError, match="not in train mode"):
        opt.step()  # a new optimizer is in eval mode, as the package's
    opt.train()
    opt.step()
    opt.eval()
    moved = [p.detach().clone() for p in params]
    sums = opt._group_sums.clone()
    with pytest.raises(RuntimeError, match="not in train mode"):
        opt.step()
    assert all(torch.equal(p, m) for p, m in zip(params, moved))
    assert torch.equal(opt._group_sums, sums) and int(opt._schedule_step) == 1
    assert not all(torch.equal(p, b) for p, b in zip(params, before))


def test_schedulefree_skipped_step_advances_nothing(backend):
    """A non-finite step is skipped on the device: no weight_sum, lr_max or k advance."""
    base = make_params()
    grads = make_grads(base, 5)
    bad = [g.clone().fill_(float("nan")) if i == 2 else g for i, g in enumerate(grads[0])]
    ours = clone_params(base)
    opt = fusedlr.AdamWScheduleFree(ours, lr=0.01, warmup_steps=2, skip_nonfinite=True, backend=backend)
    opt.train()
    run_steps(opt, ours, grads[:1] + [bad] + grads[1:])
    assert int(opt.skipped_steps) == 1
    theirs = clone_params(base)
    ref = package(theirs, lr=0.01, warmup_steps=2)
    run_steps(ref, theirs, grads)
    assert_sf_close(opt, ours, ref, theirs)


def test_schedulefree_state_dicts_load_both_ways(backend):
    base = make_params()
    grads = make_grads(base, 8)
    hypers = dict(lr=0.01, warmup_steps=3, weight_decay=0.05)
    ours, theirs = clone_params(base), clone_params(base)
    opt = fusedlr.AdamWScheduleFree(ours, backend=backend, **hypers)
    ref = schedulefree.AdamWScheduleFree(theirs, **hypers)
    for o, p in ((opt, ours), (ref, theirs)):
        o.train()
        run_steps(o, p, grads[:4])
        o.eval()  # as the package asks before saving
    ours2, theirs2 = clone_params(ours), clone_params(theirs)
    into_package = schedulefree.AdamWScheduleFree(ours2, **hypers)
    into_package.load_state_dict(copy.deepcopy(opt.state_dict()))
    into_ours = fusedlr.AdamWScheduleFree(theirs2, backend=backend, **hypers)
    into_ours.load_state_dict(copy.deepcopy(ref.state_dict()))
    assert int(into_ours._schedule_step) == 4
    for o, p in ((opt, ours), (ref, theirs), (into_package, ours2), (into_ours, theirs2)):
        o.train()
        run_steps(o, p, grads[4:])
        o.eval()
    assert_sf_close(into_ours, theirs2, ref, theirs)
    assert_sf_close(opt, ours, into_package, ours2)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    assert set(loaded["state"][0]) == {"z", "exp_avg_sq"}


def test_schedulefree_bf16_master_weights_follow_fp32_package(backend):
    """bf16 params with an fp32 master copy: the master (y) and z are the package's fp32 run."""
    base = make_params(dtype=torch.bfloat16)
    grads = make_grads(base, 6)
    ours = clone_params(base)
    opt = fusedlr.AdamWScheduleFree(ours, lr=0.01, warmup_steps=2, weight_decay=0.01, master_weights=True,
                                    backend=backend)  # fmt: skip
    opt.train()
    run_steps(opt, ours, grads)
    theirs = [p.detach().float().requires_grad_() for p in base]
    ref = package(theirs, lr=0.01, warmup_steps=2, weight_decay=0.01)
    run_steps(ref, theirs, [[g.float() for g in step] for step in grads])
    for p, q in zip(ours, theirs):
        state = opt.state[p]
        torch.testing.assert_close(state["master_param"], q.detach(), **FP32_TOL)
        torch.testing.assert_close(state["z"], ref.state[q]["z"], **FP32_TOL)
        assert state["z"].dtype == torch.float32
        torch.testing.assert_close(p.detach(), q.detach().bfloat16(), rtol=2**-7, atol=0)
    opt.eval()
    ref.eval()
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(opt.state[p]["master_param"], q.detach(), **FP32_TOL)
        torch.testing.assert_close(p.detach(), q.detach().bfloat16(), rtol=2**-7, atol=0)


def test_schedulefree_defaults_and_validation():
    p = torch.nn.Parameter(torch.zeros(3))
    ours, theirs = fusedlr.AdamWScheduleFree([p]), schedulefree.AdamWScheduleFree([p])
    for key in ("lr", "betas", "eps", "weight_decay", "warmup_steps", "r", "weight_lr_power", "train_mode"):
        assert ours.defaults[key] == theirs.defaults[key], key
    for kwargs in (dict(lr=-1.0), dict(betas=(1.0, 0.9)), dict(warmup_steps=-1), dict(warmup_steps=1.5), dict(r=-1),
                   dict(weight_lr_power=float("nan")), dict(eps=-1.0)):  # fmt: skip
        with pytest.raises(ValueError):
            fusedlr.AdamWScheduleFree([p], **kwargs)


def test_schedulefree_added_group_and_deepcopy(backend):
    """add_param_group (before training, where the package's per-group k agrees with fusedlr's one
    counter) gets its own bookkeeping; a deep copy steps as the original."""
    base = make_params()
    grads = make_grads(base, 5)
    ours = clone_params(base)
    opt = fusedlr.AdamWScheduleFree(ours[:5], lr=0.01, warmup_steps=2, backend=backend)
    opt.add_param_group(dict(params=ours[5:], lr=0.003))
    opt.train()
    run_steps(opt, ours, grads[:2])
    twin = copy.deepcopy(opt)
    twin_params = [p for group in twin.param_groups for p in group["params"]]
    theirs = clone_params(base)
    ref = package(theirs[:5], lr=0.01, warmup_steps=2)
    ref.add_param_group(dict(params=theirs[5:], lr=0.003))
    run_steps(ref, theirs, grads[:2])
    for o, p in ((opt, ours), (ref, theirs), (twin, twin_params)):
        run_steps(o, p, grads[2:])
    assert_sf_close(opt, ours, ref, theirs)
    assert_sf_close(twin, twin_params, ref, theirs)


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_schedulefree_dcp_checkpoint_resumes(tmp_path, backend):
    """torch.distributed.checkpoint (one process): saved in eval mode, loaded into a fresh optimizer
    (DCP steps it in eval mode to make its states), then both continue alike."""
    dcp = pytest.importorskip("torch.distributed.checkpoint")
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    twin = copy.deepcopy(model)
    opt = fusedlr.AdamWScheduleFree(model.parameters(), lr=0.01, warmup_steps=2, backend=backend)
    opt.train()
    for _ in range(3):
        model(torch.randn(5, 4)).sum().backward()
        opt.step()
        opt.zero_grad()
    opt.eval()
    dcp.save({"optim": get_optimizer_state_dict(model, opt)}, checkpoint_id=str(tmp_path))
    twin.load_state_dict(model.state_dict())
    resumed = fusedlr.AdamWScheduleFree(twin.parameters(), lr=0.01, warmup_steps=2, backend=backend)
    state = {"optim": get_optimizer_state_dict(twin, resumed)}
    dcp.load(state, checkpoint_id=str(tmp_path))
    set_optimizer_state_dict(twin, resumed, state["optim"])
    assert int(resumed._schedule_step) == 3
    torch.testing.assert_close(resumed._group_sums[:2], opt._group_sums[:2], rtol=0, atol=0)
    batch = torch.randn(5, 4)
    for o, m in ((opt, model), (resumed, twin)):
        o.train()
        m(batch).sum().backward()
        o.step()
        o.eval()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_schedulefree_current_lr_is_the_packages_scheduled_lr(backend):
    """current_lr() (device tensors) is the lr each update applied, warmup included: the
    package's group["scheduled_lr"]; next_lr() the one to come."""
    base = make_params([(3,), (4, 2)])
    grads = make_grads(base, 6)
    ours, theirs = clone_params(base), clone_params(base)
    opt = fusedlr.AdamWScheduleFree([dict(params=ours[:1], warmup_steps=4), dict(params=ours[1:], lr=0.02)], lr=0.01,
                                    backend=backend)  # fmt: skip
    opt.train()
    ref = package([dict(params=theirs[:1], warmup_steps=4), dict(params=theirs[1:], lr=0.02)], lr=0.01)
    assert [float(lr) for lr in opt.current_lr()] == [0.01 / 4, 0.02]  # before the first update: the first's
    for step_grads in grads:
        upcoming = [float(lr) for lr in opt.next_lr()]
        run_steps(opt, ours, [step_grads])
        run_steps(ref, theirs, [step_grads])
        applied = [float(lr) for lr in opt.current_lr()]
        expected = [group["scheduled_lr"] for group in ref.param_groups]
        assert applied == pytest.approx(expected, rel=1e-15) and upcoming == applied


def test_schedulefree_with_a_device_schedule_is_the_package_under_lambdalr(backend):
    """A fusedlr schedule multiplies the lr before warmup and lr_max, as LambdaLR driving the
    package's group lr does."""
    from oracles import hf_cosine

    from fusedlr import schedules

    base = make_params()
    grads = make_grads(base, STEPS)
    spec = [dict(params=list(range(len(base))), lr=0.01, warmup_steps=2)]
    ours = clone_params(base)
    opt = fusedlr.AdamWScheduleFree(ours, lr=0.01, warmup_steps=2, schedule=schedules.WarmupCosine(3, 8),
                                    backend=backend)  # fmt: skip
    opt.train()
    run_steps(opt, ours, grads)
    theirs = clone_params(base)
    ref, _ = run_by_hand(package, theirs, spec, grads, lr_lambda=hf_cosine(3, 8))
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, **FP32_TOL)
    lr_max, weight_sum = opt._group_sums[:2, 0].tolist()
    assert lr_max == pytest.approx(ref.param_groups[0]["lr_max"], rel=1e-12)
    assert weight_sum == pytest.approx(ref.param_groups[0]["weight_sum"], rel=1e-12)


def test_schedulefree_state_dict_stepped_further_by_the_package_resumes_at_its_k(backend):
    """The package keeps fusedlr's ``schedule_step`` group key when it loads our state dict; after
    it stepped further, its own ``k`` is the counter that comes back."""
    base = make_params()
    grads = make_grads(base, 7)
    hypers = dict(lr=0.01, warmup_steps=6, weight_decay=0.05)
    ours = clone_params(base)
    opt = fusedlr.AdamWScheduleFree(ours, backend=backend, **hypers)
    opt.train()
    run_steps(opt, ours, grads[:2])
    theirs = clone_params(ours)
    ref = schedulefree.AdamWScheduleFree(theirs, **hypers)
    ref.load_state_dict(copy.deepcopy(opt.state_dict()))
    ref.train()
    run_steps(ref, theirs, grads[2:5])
    back_params = clone_params(theirs)
    back = fusedlr.AdamWScheduleFree(back_params, backend=backend, **hypers)
    back.load_state_dict(copy.deepcopy(ref.state_dict()))
    assert int(back._schedule_step) == 5
    back.train()
    run_steps(ref, theirs, grads[5:])
    run_steps(back, back_params, grads[5:])
    assert_sf_close(back, back_params, ref, theirs)


def test_schedulefree_group_added_in_train_mode_steps_and_whole_warmup_floats(backend):
    """A group added after train() joins in train mode (its params have no state: y and x are
    the same), so step() works without another train(); warmup_steps=5.0 is accepted as 5, as
    the package accepts it, and a fractional one is refused."""
    base = make_params()
    grads = make_grads(base, 3)
    ours, theirs = clone_params(base), clone_params(base)
    opt = fusedlr.AdamWScheduleFree(ours[:5], lr=0.01, warmup_steps=5.0, backend=backend)
    opt.train()
    opt.add_param_group(dict(params=ours[5:], lr=0.003))
    assert all(group["train_mode"] for group in opt.param_groups)
    run_steps(opt, ours, grads)
    ref = package(theirs[:5], lr=0.01, warmup_steps=5)
    ref.train()
    ref.add_param_group(dict(params=theirs[5:], lr=0.003))
    run_steps(ref, theirs, grads)
    assert_sf_close(opt, ours, ref, theirs)
    with pytest.raises(ValueError, match="warmup_steps"):
        fusedlr.AdamWScheduleFree(clone_params(base), warmup_steps=2.5)
