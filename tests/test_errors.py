"""Bad input: torch's exception types and messages, raised before anything is modified."""

import pytest
import torch
from helpers import make_params

import fusedlr

CONSTRUCTOR_ERRORS = [
    (dict(lr=-1.0), "Invalid learning rate: -1.0"),
    (dict(lr=float("nan")), "Invalid learning rate"),
    (dict(eps=-1e-8), "Invalid epsilon value: -1e-08"),
    (dict(betas=(1.0, 0.999)), "Invalid beta parameter at index 0: 1.0"),
    (dict(betas=(0.9, -0.1)), "Invalid beta parameter at index 1: -0.1"),
    (dict(betas=(0.9,)), "Invalid betas"),
    (dict(weight_decay=-0.1), "Invalid weight_decay value: -0.1"),
    (dict(max_grad_norm=0.0), "Invalid max_grad_norm: 0.0"),
    (dict(max_grad_norm=-1.0), "Invalid max_grad_norm: -1.0"),
    (dict(agc_clip_factor=0.0), "Invalid agc_clip_factor: 0.0"),
    (dict(agc_eps=0.0), "Invalid agc_eps: 0.0"),
    (dict(schedule=3), "Invalid schedule"),
    (
        dict(backend="cuda-magic"),
        r"Invalid backend: 'cuda-magic' \(valid backends: 'auto', 'torch', 'cpu', 'triton', 'cuda'\)",
    ),
]


@pytest.mark.parametrize(
    "cls, kwargs, message",
    [(fusedlr.AdamW, *case) for case in CONSTRUCTOR_ERRORS]
    + [(fusedlr.Lion, *case) for case in CONSTRUCTOR_ERRORS if "eps" not in case[0]],
)
def test_constructor_errors(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls([torch.nn.Parameter(torch.zeros(2))], **kwargs)


def test_empty_parameter_list_is_torchs_error():
    with pytest.raises(ValueError, match="empty parameter list"):
        fusedlr.AdamW([])


def test_add_param_group_is_validated():
    opt = fusedlr.AdamW([torch.nn.Parameter(torch.zeros(2))])
    with pytest.raises(ValueError, match="Invalid learning rate: -2"):
        opt.add_param_group(dict(params=[torch.nn.Parameter(torch.zeros(2))], lr=-2))


def test_unknown_backend_in_environment(monkeypatch):
    monkeypatch.setenv("FUSEDLR_BACKEND", "nope")
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.ones(2)
    with pytest.raises(ValueError, match="FUSEDLR_BACKEND='nope'"):
        fusedlr.AdamW([p]).step()


def _snapshot(params, opt):
    return (
        [p.detach().clone() for p in params],
        {id(p): {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()},
        opt.state_dict()["schedule_step"].clone(),
    )


def _assert_unchanged(params, opt, snapshot):
    before_params, before_state, before_counter = snapshot
    for p, q in zip(params, before_params):
        assert torch.equal(p.detach(), q)
    assert {id(p) for p in opt.state} == set(before_state)
    for p, s in opt.state.items():
        for k, v in s.items():
            assert torch.equal(v, before_state[id(p)][k]), k
    assert torch.equal(opt.state_dict()["schedule_step"], before_counter)


def _trained(backend, cls=fusedlr.AdamW):
    params = make_params([(4,), (3, 2), (5,)])
    opt = cls(params, lr=0.1, max_grad_norm=1.0, backend=backend)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    return params, opt


@pytest.mark.parametrize("cls", [fusedlr.AdamW, fusedlr.Lion])
def test_sparse_grad_fails_before_any_change(backend, cls):
    params, opt = _trained(backend, cls)
    snap = _snapshot(params, opt)
    params[0].grad = torch.randn_like(params[0])  # a good grad that comes first...
    params[2].grad = torch.randn(5).to_sparse()  # ...and a bad one after it
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        opt.step()
    _assert_unchanged(params, opt, snap)


def test_non_floating_param_fails_before_any_change(backend):
    params, opt = _trained(backend)
    bad = torch.zeros(3, dtype=torch.int64)
    bad.grad = torch.zeros(3, dtype=torch.int64)
    opt.add_param_group(dict(params=[bad]))
    snap = _snapshot(params, opt)
    with pytest.raises(RuntimeError, match="real floating-point parameters only"):
        opt.step()
    _assert_unchanged(params, opt, snap)


def test_complex_param_is_refused(backend):
    p = torch.zeros(3, dtype=torch.complex64, requires_grad=True)
    p.grad = torch.ones_like(p)
    with pytest.raises(RuntimeError, match="real floating-point parameters only"):
        fusedlr.AdamW([p], backend=backend).step()


def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    params = make_params([(4,)])
    opt = fusedlr.AdamW(params, backend="triton")
    params[0].grad = torch.ones(4)
    before = params[0].detach().clone()
    with pytest.raises(RuntimeError, match="backend='triton' needs CUDA tensors"):
        opt.step()
    assert torch.equal(params[0].detach(), before) and not opt.state


def test_triton_refuses_gapped_params_before_any_change(triton_backend):
    params, opt = _trained(triton_backend)
    gapped = torch.randn(6, 8)[:, ::2].requires_grad_()
    gapped.grad = torch.randn(6, 4)
    opt.add_param_group(dict(params=[gapped]))
    snap = _snapshot(params, opt)
    with pytest.raises(RuntimeError, match="dense in memory"):
        opt.step()
    _assert_unchanged(params, opt, snap)
    assert gapped not in opt.state


def test_triton_refuses_grad_with_another_layout(triton_backend):
    p = torch.randn(5, 7).t().requires_grad_()
    p.grad = torch.randn(7, 5)  # contiguous, while p is transposed
    with pytest.raises(RuntimeError, match="same memory layout"):
        fusedlr.AdamW([p], backend=triton_backend).step()


def test_torch_backend_runs_gapped_params():
    gapped = torch.randn(6, 8)[:, ::2].requires_grad_()
    gapped.grad = torch.ones(6, 4)
    ref = gapped.detach().clone().requires_grad_()
    ref.grad = torch.ones(6, 4)
    fusedlr.AdamW([gapped], backend="torch").step()
    torch.optim.AdamW([ref], foreach=False).step()
    torch.testing.assert_close(gapped, ref, rtol=0, atol=0)


def test_cuda_backend_without_the_extension_says_how_to_build_it(monkeypatch):
    from fusedlr import _cuda

    monkeypatch.setattr(_cuda, "_import", lambda major: None)
    _cuda._choose.cache_clear()
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    try:
        with pytest.raises(
            RuntimeError, match="fusedlr._C_cu12 / fusedlr._C_cu13\\) is not installed.*FUSEDLR_BUILD_CUDA=1"
        ):
            fusedlr.AdamW([p], backend="cuda").step()
        assert "cuda" not in fusedlr.available_backends()
    finally:
        _cuda._choose.cache_clear()


def test_state_replaced_by_a_wrong_tensor_is_refused_before_any_change(triton_backend):
    """A state tensor swapped between steps is checked again like a new one: wrong shape here."""
    params = make_params([(8,)])
    opt = fusedlr.AdamW(params, backend=triton_backend)
    params[0].grad = torch.ones(8)
    opt.step()
    opt.state[params[0]]["exp_avg"] = torch.zeros(4, 2).t()  # same numel, gaps in the wrong order
    before = params[0].detach().clone()
    with pytest.raises(RuntimeError, match="exp_avg"):
        opt.step()
    assert torch.equal(params[0].detach(), before)


@pytest.mark.parametrize(
    "name, bad",
    [("exp_avg", torch.zeros(4)), ("exp_avg_sq", torch.zeros(8, dtype=torch.int32)),
     ("step", torch.tensor(1.0, dtype=torch.float64))],
    ids=["short", "integer", "float64-step"],
)  # fmt: skip
def test_state_of_wrong_size_or_dtype_is_refused_before_any_change(triton_backend, name, bad):
    params = make_params([(8,)])
    opt = fusedlr.AdamW(params, backend=triton_backend)
    params[0].grad = torch.ones(8)
    opt.step()
    opt.state[params[0]][name] = bad
    before = params[0].detach().clone()
    with pytest.raises(RuntimeError, match=f"state '{name}'"):
        opt.step()
    assert torch.equal(params[0].detach(), before)


def test_state_of_another_float_dtype_is_cast_to_the_state_dtype(backend):
    """A float64 moment assigned to an fp32 param's state is cast (as a changed state_dtype is),
    and the step goes on as torch's, which computes with whatever dtype it finds."""
    ours, ref = make_params([(8,)]), make_params([(8,)])
    opt = fusedlr.AdamW(ours, lr=0.1, backend=backend)
    ref_opt = torch.optim.AdamW(ref, lr=0.1, foreach=False)
    for p in ours + ref:
        p.grad = torch.linspace(-1, 1, 8)
    for o, p in ((opt, ours[0]), (ref_opt, ref[0])):
        o.step()
        o.state[p]["exp_avg_sq"] = o.state[p]["exp_avg_sq"].double()
        o.step()
    assert opt.state[ours[0]]["exp_avg_sq"].dtype == torch.float32
    torch.testing.assert_close(ours[0].detach(), ref[0].detach())


def test_a_grad_that_is_not_a_tensor_fails_before_any_change(backend):
    params, opt = _trained(backend)
    snap = _snapshot(params, opt)
    opt.grad_attribute = "main_grad"
    for p in params:
        p.main_grad = torch.randn_like(p)
    params[1].main_grad = 3.0
    with pytest.raises(RuntimeError, match="main_grad of a parameter is a float, not a tensor"):
        opt.step()
    _assert_unchanged(params, opt, snap)
