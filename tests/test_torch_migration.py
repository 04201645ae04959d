"""A torch.optim.AdamW checkpoint driven by a torch LR scheduler, continued by fusedlr with the
same schedule: the next updates are the uninterrupted torch run's (the README's claim)."""

import copy
import warnings

import pytest
import torch
from lion_pytorch import Lion as LionPytorch

import fusedlr
from fusedlr import schedules as S

SCHEDULE = S.WarmupCosine(3, 12, min_lr_ratio=0.1)


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))


def _grads(steps, model):
    gen = torch.Generator().manual_seed(1)
    return [[torch.randn(p.shape, generator=gen) for p in model.parameters()] for _ in range(steps)]


def _set(model, grads):
    for p, g in zip(model.parameters(), grads):
        p.grad = g.clone()


def _groups(model, lr):
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    return [{"params": weights, "weight_decay": 0.1}, {"params": biases, "weight_decay": 0.0, "lr": lr / 2}]


def _torch_step(model, opt, scheduler):
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    scheduler.step()


@pytest.mark.parametrize("schedule", [SCHEDULE, S.CosineAnnealing(10, eta_min=1e-4)], ids=["relative", "absolute"])
def test_torch_adamw_with_a_torch_scheduler_continues_identically(backend, schedule):
    lr, first, then = 1e-2, 5, 4
    model = _model()
    grads = _grads(first + then, model)
    opt = torch.optim.AdamW(_groups(model, lr), lr=lr, foreach=False)
    if isinstance(schedule, S.CosineAnnealing):  # torch's own scheduler for the absolute floor
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 10, eta_min=1e-4)
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    for k in range(first):
        _set(model, grads[k])
        _torch_step(model, opt, scheduler)
    saved_model = {n: p.detach().clone() for n, p in model.named_parameters()}
    saved = copy.deepcopy(opt.state_dict())  # torch's state dict holds the live state tensors
    assert saved["param_groups"][0]["lr"] != saved["param_groups"][0]["initial_lr"]  # decayed by the scheduler
    for k in range(first, first + then):
        _set(model, grads[k])
        _torch_step(model, opt, scheduler)

    fused_model = _model()
    fused_model.load_state_dict(saved_model)
    fused = fusedlr.AdamW(_groups(fused_model, lr), lr=lr, schedule=schedule, max_grad_norm=1.0, backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        fused.load_state_dict(saved)
    assert [g["lr"] for g in fused.param_groups] == [lr, lr / 2]  # the base: initial_lr
    assert int(fused._schedule_step) == first
    assert float(fused.next_lr()[0]) == pytest.approx(saved["param_groups"][0]["lr"], rel=1e-12)
    assert all("initial_lr" not in g for g in fused.param_groups)  # no torch scheduler drives them now
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # in particular no "two schedules" warning
        for k in range(first, first + then):
            _set(fused_model, grads[k])
            fused.step()
    for (name, p), q in zip(model.named_parameters(), fused_model.parameters()):
        torch.testing.assert_close(q, p, rtol=2e-5, atol=2e-6, msg=name)


def test_a_scheduler_stepped_otherwise_is_named(backend):
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, SCHEDULE)
    for grads in _grads(4, model):
        _set(model, grads)
        opt.step()
        scheduler.step()
        scheduler.step()  # twice per update: not the schedule fusedlr will continue
    fused = fusedlr.AdamW(model.parameters(), lr=1e-2, schedule=SCHEDULE, backend=backend)
    with pytest.warns(UserWarning, match="not stepped once per optimizer step"):
        fused.load_state_dict(opt.state_dict())
    assert fused.param_groups[0]["lr"] == 1e-2 and int(fused._schedule_step) == 4


def test_without_a_fusedlr_schedule_the_torch_lr_is_kept(backend):
    """No schedule in fusedlr: the user's torch scheduler goes on writing group['lr'], as in torch."""
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, SCHEDULE)
    for grads in _grads(4, model):
        _set(model, grads)
        opt.step()
        scheduler.step()
    fused = fusedlr.AdamW(model.parameters(), lr=1e-2, backend=backend)
    fused.load_state_dict(opt.state_dict())
    assert fused.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == SCHEDULE.lr(4, 1e-2)


def test_lion_pytorch_has_no_step_count_the_loader_says_what_to_do():
    model = _model()
    opt = LionPytorch(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, SCHEDULE)
    for grads in _grads(5, model):
        _set(model, grads)
        opt.step()
        scheduler.step()
    saved = opt.state_dict()
    fused = fusedlr.Lion(model.parameters(), lr=1e-3, schedule=SCHEDULE)
    with pytest.warns(UserWarning, match=r"set state_dict\['schedule_step'\]"):
        fused.load_state_dict(saved)
    fused = fusedlr.Lion(model.parameters(), lr=1e-3, schedule=SCHEDULE)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        fused.load_state_dict(dict(saved, schedule_step=5))  # as the message says
    assert fused.param_groups[0]["lr"] == 1e-3 and int(fused._schedule_step) == 5
    assert float(fused.next_lr()[0]) == pytest.approx(saved["param_groups"][0]["lr"], rel=1e-12)


def test_a_fusedlr_state_dict_stepped_further_by_torch_comes_back_with_torchs_counter(backend):
    """torch.optim keeps unknown group keys, so a fusedlr state dict that torch.optim.AdamW (with
    LambdaLR) stepped further still carries fusedlr's old ``schedule_step`` in its groups: the
    per-parameter steps, ahead of it, tell that it is stale, and the torch run's counter and
    initial_lr are taken, as for any torch checkpoint."""
    lr, first, then, after = 1e-2, 2, 3, 3
    model = _model()
    grads = _grads(first + then + after, model)
    fused = fusedlr.AdamW(_groups(model, lr), lr=lr, schedule=SCHEDULE, max_grad_norm=1.0, backend=backend)
    for k in range(first):
        _set(model, grads[k])
        fused.step()
    torch_model = _model()
    torch_model.load_state_dict(model.state_dict())
    opt = torch.optim.AdamW(_groups(torch_model, lr), lr=lr, foreach=False)
    opt.load_state_dict(copy.deepcopy(fused.state_dict()))
    assert opt.param_groups[0]["schedule_step"] == first  # carried along, stale from here on
    for group in opt.param_groups:  # the torch run continues the same schedule with LambdaLR
        group["initial_lr"] = group["lr"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, SCHEDULE, last_epoch=first - 1)
    for k in range(first, first + then):
        _set(torch_model, grads[k])
        _torch_step(torch_model, opt, scheduler)
    saved = copy.deepcopy(opt.state_dict())
    back_model = _model()
    back_model.load_state_dict(torch_model.state_dict())
    back = fusedlr.AdamW(_groups(back_model, lr), lr=lr, schedule=SCHEDULE, max_grad_norm=1.0, backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        back.load_state_dict(saved)
    assert int(back._schedule_step) == first + then
    assert [g["lr"] for g in back.param_groups] == [lr, lr / 2]
    for k in range(first + then, first + then + after):
        _set(torch_model, grads[k])
        _torch_step(torch_model, opt, scheduler)
        _set(back_model, grads[k])
        back.step()
    for (name, p), q in zip(torch_model.named_parameters(), back_model.parameters()):
        torch.testing.assert_close(q, p, rtol=2e-5, atol=2e-6, msg=name)


def test_a_counter_set_by_hand_survives_a_round_trip_without_the_top_level_key(backend):
    """A torch checkpoint of 6 updates resumed with ``schedule_step = 2`` set by hand (the
    migration warning's advice: the schedule restarts elsewhere): the per-parameter steps are
    ahead of fusedlr's counter from then on, legitimately. A later state dict that travels
    without its top-level counter (as through DCP) still resumes at fusedlr's counter."""
    model = _model()
    grads = _grads(8, model)
    opt = torch.optim.AdamW(_groups(model, 1e-2), lr=1e-2, foreach=False)
    for k in range(6):
        _set(model, grads[k])
        opt.step()
    saved = copy.deepcopy(opt.state_dict())
    saved["schedule_step"] = 2
    fused = fusedlr.AdamW(_groups(model, 1e-2), lr=1e-2, schedule=SCHEDULE, backend=backend)
    fused.load_state_dict(saved)
    _set(model, grads[6])
    fused.step()
    again = copy.deepcopy(fused.state_dict())
    del again["schedule_step"]
    back = fusedlr.AdamW(_groups(model, 1e-2), lr=1e-2, schedule=SCHEDULE, backend=backend)
    back.load_state_dict(again)
    assert int(back._schedule_step) == 3
