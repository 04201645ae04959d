"""The torch.optim.Optimizer contract: groups, closures, hooks, zero_grad, skipped params."""

import pytest
import torch
from helpers import make_params

import fusedlr
from fusedlr import _cpu, schedules


def test_defaults_are_torch_adamws():
    p = torch.nn.Parameter(torch.zeros(2))
    ours, theirs = fusedlr.AdamW([p]), torch.optim.AdamW([p])
    for key in ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize"):
        assert ours.defaults[key] == theirs.defaults[key]
    assert isinstance(ours, torch.optim.Optimizer)


def test_step_without_grads_is_a_no_op(backend):
    params = make_params([(3,), (4,)])
    opt = fusedlr.AdamW(params, schedule=schedules.WarmupLinear(1, 5), backend=backend)
    before = [p.detach().clone() for p in params]
    assert opt.step() is None
    assert not opt.state and opt.last_grad_norm is None
    assert int(opt.state_dict()["schedule_step"]) == 0
    for p, q in zip(params, before):
        assert torch.equal(p.detach(), q)


def test_closure_is_called_with_grad_enabled_and_its_loss_returned(backend):
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = fusedlr.AdamW([w], lr=0.1, backend=backend)

    def closure():
        opt.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert float(loss.detach()) == 5.0
    assert float(w[0].detach()) < 1.0 and float(w[1].detach()) > -2.0


def test_zero_grad_and_none_grads(backend):
    params = make_params([(3,), (4,)])
    opt = fusedlr.AdamW(params, backend=backend)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    opt.zero_grad()
    assert all(p.grad is None for p in params)
    params[1].grad = torch.ones_like(params[1])
    opt.step()
    assert float(opt.state[params[0]]["step"]) == 1
    assert float(opt.state[params[1]]["step"]) == 2


def test_step_hooks_run(backend):
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.ones(2)
    opt = fusedlr.Lion([p], backend=backend)
    calls = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))
    opt.step()
    assert calls == ["pre", "post"]


def test_add_param_group_takes_part_in_the_next_step(backend):
    a, b = make_params([(3,), (2,)])
    opt = fusedlr.AdamW([a], lr=0.1, backend=backend)
    a.grad = torch.ones(3)
    opt.step()
    opt.add_param_group(dict(params=[b], lr=0.2, weight_decay=0.0))
    b.grad = torch.ones(2)
    before = b.detach().clone()
    opt.step()
    # The first AdamW update moves each element by lr (m/sqrt(v) = 1 after bias correction).
    torch.testing.assert_close(before - b.detach(), torch.full((2,), 0.2), rtol=1e-5, atol=1e-7)


def test_last_grad_norm_is_the_norm_before_clipping(backend):
    params = make_params([(30,), (4, 5)])
    opt = fusedlr.AdamW(params, max_grad_norm=0.5, backend=backend)
    for p in params:
        p.grad = torch.full_like(p, 2.0)
    opt.step()
    expected = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in params]))
    assert opt.last_grad_norm.ndim == 0 and opt.last_grad_norm.device == params[0].device
    torch.testing.assert_close(opt.last_grad_norm, expected)
    first = opt.last_grad_norm
    for p in params:
        p.grad = torch.full_like(p, 1.0)
    opt.step()
    assert float(first) == pytest.approx(float(expected))  # earlier values are not overwritten


def test_infinite_max_grad_norm_reports_the_norm_without_clipping(backend):
    params = make_params([(7,)])
    ref = [p.detach().clone().requires_grad_() for p in params]
    opt = fusedlr.AdamW(params, max_grad_norm=float("inf"), backend=backend)
    ref_opt = torch.optim.AdamW(ref, foreach=False)
    for p, r in zip(params, ref):
        p.grad = torch.full_like(p, 100.0)
        r.grad = p.grad.clone()
    opt.step()
    ref_opt.step()
    torch.testing.assert_close(params[0], ref[0])
    assert float(opt.last_grad_norm) == pytest.approx(100.0 * 7**0.5)


def test_available_backends_and_auto_choice(monkeypatch):
    names = fusedlr.available_backends()
    assert "torch" in names
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.ones(2)
    assert "cpu" in names
    opt = fusedlr.AdamW([p])
    opt.step()  # auto on CPU tensors is the cpu backend: it caches its plan
    assert isinstance(opt._plan_cache, _cpu.CpuPlan)
    monkeypatch.setenv("FUSEDLR_BACKEND", "torch")  # the reference builds none
    opt = fusedlr.AdamW([p])
    opt.step()
    assert opt._plan_cache is None


def test_environment_override_selects_the_backend(monkeypatch, triton_backend):
    monkeypatch.setenv("FUSEDLR_BACKEND", triton_backend)
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.ones(2)
    opt = fusedlr.AdamW([p])
    opt.step()
    assert opt._plan_cache is not None
