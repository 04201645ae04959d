"""Tensors the kernels cannot address by ``data_ptr()`` (tensor subclasses, meta tensors) are
refused before any launch, with nothing modified; the torch backend steps what torch can."""

from __future__ import annotations

import pytest
import torch

import fusedlr


class Wrapped(torch.Tensor):
    """A tensor subclass, as quantisation and tracing libraries make them."""


@pytest.mark.parametrize("cls", [fusedlr.AdamW, fusedlr.Lion])
@pytest.mark.parametrize("what", ["param", "grad"])
def test_subclass_refused_before_any_change(triton_backend, cls, what):
    plain = torch.nn.Parameter(torch.ones(5))
    other = torch.nn.Parameter(torch.ones(3))
    if what == "param":
        other = torch.nn.Parameter(torch.ones(3).as_subclass(Wrapped))
    opt = cls([plain, other], lr=0.1, max_grad_norm=1.0, backend=triton_backend)
    plain.grad = torch.ones(5)
    other.grad = torch.ones(3).as_subclass(Wrapped) if what == "grad" else torch.ones(3)
    with pytest.raises(RuntimeError, match="cannot address"):
        opt.step()
    assert torch.equal(plain.detach(), torch.ones(5)) and torch.equal(
        other.detach().as_subclass(torch.Tensor), torch.ones(3)
    )
    assert not opt.state and int(opt._schedule_step) == 0


@pytest.mark.parametrize("cls", [fusedlr.AdamW, fusedlr.Lion])
def test_meta_params_refused_by_the_kernels(triton_backend, cls):
    param = torch.nn.Parameter(torch.empty(4, 4, device="meta"))
    param.grad = torch.empty(4, 4, device="meta")
    opt = cls([param], lr=0.1, backend=triton_backend)
    with pytest.raises(RuntimeError, match="meta"):
        opt.step()
    assert not opt.state


def test_replaced_state_of_a_subclass_refused(triton_backend):
    param = torch.nn.Parameter(torch.ones(6))
    opt = fusedlr.AdamW([param], lr=0.1, backend=triton_backend)
    param.grad = torch.ones(6)
    opt.step()
    before = param.detach().clone()
    opt.state[param]["exp_avg"] = opt.state[param]["exp_avg"].as_subclass(Wrapped)
    with pytest.raises(RuntimeError, match="state 'exp_avg'"):
        opt.step()
    assert torch.equal(param.detach(), before)
