"""state_dict round trips and interop with torch.optim.AdamW and lion-pytorch."""

import io

import pytest
import torch
from helpers import assert_states_close, clone_params, make_grads, make_params, run_steps
from lion_pytorch import Lion as ReferenceLion

import fusedlr
from fusedlr import schedules


def _adamw(params, backend, **kw):
    return fusedlr.AdamW(params, lr=1e-2, weight_decay=0.1, schedule=schedules.WarmupCosine(3, 30),
                         max_grad_norm=1.0, backend=backend, **kw)  # fmt: skip


def _roundtrip(state_dict, weights_only=True):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=weights_only)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_resume_is_bit_for_bit(backend, amsgrad):
    base = make_params()
    grads = make_grads(base, 12)

    straight = clone_params(base)
    opt = _adamw(straight, backend, amsgrad=amsgrad)
    run_steps(opt, straight, grads)

    first = clone_params(base)
    opt_a = _adamw(first, backend, amsgrad=amsgrad)
    run_steps(opt_a, first, grads[:5])
    saved = _roundtrip(opt_a.state_dict())
    assert int(saved["schedule_step"]) == 5
    resumed = clone_params(first)
    opt_b = _adamw(resumed, backend, amsgrad=amsgrad)
    opt_b.load_state_dict(saved)
    run_steps(opt_b, resumed, grads[5:])

    assert_states_close(opt, straight, opt_b, resumed, rtol=0, atol=0)
    assert int(opt_b.state_dict()["schedule_step"]) == 12


def test_state_keys_match_torch():
    p = torch.nn.Parameter(torch.randn(3))
    p.grad = torch.randn(3)
    ours, theirs = fusedlr.AdamW([p], amsgrad=True, backend="torch"), torch.optim.AdamW([p], amsgrad=True)
    ours.step()
    theirs.step()
    assert set(ours.state[p]) == set(theirs.state[p]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    lion = fusedlr.Lion([p], backend="torch")
    lion.step()
    assert set(lion.state[p]) == {"exp_avg"}


def test_torch_adamw_state_dict_continues_identically(backend):
    base = make_params()
    grads = make_grads(base, 10, skip=lambda step, i: i == 1 and step < 2)
    # torch trains 6 steps, fusedlr takes over for 4; compared with torch doing all 10.
    theirs = clone_params(base)
    ref = torch.optim.AdamW(theirs, lr=1e-2, weight_decay=0.1, foreach=False)
    run_steps(ref, theirs, grads)

    mine = clone_params(base)
    donor = torch.optim.AdamW(mine, lr=1e-2, weight_decay=0.1, foreach=False)
    run_steps(donor, mine, grads[:6])
    opt = fusedlr.AdamW(mine, lr=1e-2, weight_decay=0.1, backend=backend)
    opt.load_state_dict(_roundtrip(donor.state_dict()))
    # No counter in a torch state dict: it starts at the largest per-parameter step.
    assert int(opt.state_dict()["schedule_step"]) == 6
    run_steps(opt, mine, grads[6:])
    assert_states_close(opt, mine, ref, theirs)


def test_fusedlr_state_dict_loads_into_torch_adamw(backend):
    base = make_params()
    grads = make_grads(base, 10)
    theirs = clone_params(base)
    ref = torch.optim.AdamW(theirs, lr=1e-2, amsgrad=True, foreach=False)
    run_steps(ref, theirs, grads)

    mine = clone_params(base)
    opt = fusedlr.AdamW(mine, lr=1e-2, amsgrad=True, backend=backend)
    run_steps(opt, mine, grads[:4])
    taker = torch.optim.AdamW(mine, lr=1e-2, amsgrad=True, foreach=False)
    taker.load_state_dict(_roundtrip(opt.state_dict()))
    run_steps(taker, mine, grads[4:])
    assert_states_close(taker, mine, ref, theirs)


def test_lion_state_dict_interop_with_lion_pytorch(backend):
    base = make_params()
    grads = make_grads(base, 8)
    theirs = clone_params(base)
    ref = ReferenceLion(theirs, lr=1e-3, weight_decay=0.1)
    run_steps(ref, theirs, grads)

    mine = clone_params(base)
    donor = ReferenceLion(mine, lr=1e-3, weight_decay=0.1)
    run_steps(donor, mine, grads[:3])
    opt = fusedlr.Lion(mine, lr=1e-3, weight_decay=0.1, backend=backend)
    opt.load_state_dict(_roundtrip(donor.state_dict()))
    run_steps(opt, mine, grads[3:6])
    back = ReferenceLion(mine, lr=1e-3, weight_decay=0.1)
    back.load_state_dict(_roundtrip(opt.state_dict()))
    run_steps(back, mine, grads[6:])
    assert_states_close(back, mine, ref, theirs)


def test_load_keeps_no_reference_to_the_loaded_dict():
    p = torch.nn.Parameter(torch.randn(4))
    p.grad = torch.randn(4)
    opt = fusedlr.AdamW([p], backend="torch")
    opt.step()
    saved = opt.state_dict()
    step_before = saved["state"][0]["step"].clone()
    other = fusedlr.AdamW([p], backend="torch")
    other.load_state_dict(saved)
    other.step()
    assert torch.equal(saved["state"][0]["step"], step_before)


def test_param_groups_survive_the_round_trip():
    params = make_params([(3,), (4,)])
    opt = fusedlr.AdamW([dict(params=[params[0]], lr=0.5, agc_clip_factor=0.1), dict(params=[params[1]])],
                        backend="torch")  # fmt: skip
    copy = fusedlr.AdamW([dict(params=[params[0]]), dict(params=[params[1]])], backend="torch")
    copy.load_state_dict(_roundtrip(opt.state_dict()))
    assert copy.param_groups[0]["lr"] == 0.5
    assert copy.param_groups[0]["agc_clip_factor"] == 0.1
    assert copy.param_groups[1]["agc_clip_factor"] is None
