"""The Triton backend's shape: a fixed number of launches, a cached plan, runtime hyperparameters."""

import pytest
import torch
from helpers import make_params

import fusedlr
from fusedlr import schedules


class _CountingKernel:
    def __init__(self, kernel, log):
        self.kernel, self.log = kernel, log

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            self.log.append(self.kernel.fn.__name__ if hasattr(self.kernel, "fn") else str(self.kernel))
            return launch(*args, **kwargs)

        return run


@pytest.fixture
def launch_log(monkeypatch, triton_backend):
    from fusedlr._triton import kernels

    log = []
    for name in ("_grad_sumsq_kernel", "_tensor_sumsq_kernel", "_finalize_kernel", "_update_kernel"):
        monkeypatch.setattr(kernels, name, _CountingKernel(getattr(kernels, name), log))
    return log


def _launches(log, backend, num_tensors, **options):
    params = [torch.randn(3, requires_grad=True) for _ in range(num_tensors)]
    opt = fusedlr.AdamW(params, backend=backend, **options)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    log.clear()
    opt.step()
    return len(log)


@pytest.mark.parametrize("options", [{}, dict(max_grad_norm=1.0), dict(agc_clip_factor=0.1, max_grad_norm=1.0)])
def test_launch_count_does_not_grow_with_tensors(launch_log, triton_backend, options):
    one = _launches(launch_log, triton_backend, 1, **options)
    many = _launches(launch_log, triton_backend, 500, **options)
    assert one == many
    assert one == (4 if options else 2)  # norm pass (2) only with clipping or AGC; finalize; update


def test_one_update_launch_per_dtype_bucket(launch_log, triton_backend):
    params = [torch.randn(4, requires_grad=True), torch.randn(4, dtype=torch.float64, requires_grad=True)]
    opt = fusedlr.AdamW(params, max_grad_norm=1.0, backend=triton_backend)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    assert sorted(launch_log) == sorted(
        ["_grad_sumsq_kernel"] * 2 + ["_tensor_sumsq_kernel", "_finalize_kernel"] + ["_update_kernel"] * 2
    )


def test_plan_is_cached_and_rebuilt_only_when_tensors_move(triton_backend):
    params = make_params([(5,), (6,)])
    opt = fusedlr.AdamW(params, backend=triton_backend)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    plan = opt._plan_cache
    for p in params:
        p.grad.mul_(2)  # same storage
    opt.step()
    assert opt._plan_cache is plan
    params[1].grad = torch.ones_like(params[1])  # a new grad tensor: new address
    opt.step()
    assert opt._plan_cache is not plan and opt._plan_cache.num_tensors == 2
    plan = opt._plan_cache
    params[0].grad = None  # the set of tensors changes
    opt.step()
    assert opt._plan_cache is not plan and opt._plan_cache.num_tensors == 1


def test_new_lr_is_uploaded_without_rebuilding_the_plan(triton_backend):
    p = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = fusedlr.Lion([p], lr=1.0, backend=triton_backend)
    p.grad = torch.ones_like(p)
    opt.step()
    plan = opt._plan_cache
    opt.param_groups[0]["lr"] = 0.25
    opt.step()
    assert opt._plan_cache is plan
    assert float(p.detach()) == pytest.approx(-1.25)


def test_zero_size_tensors_are_skipped_but_their_step_advances(triton_backend):
    params = make_params([(0,), (3,), (0, 4)])
    opt = fusedlr.AdamW(params, max_grad_norm=1.0, backend=triton_backend)
    for _ in range(3):
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()
    assert [float(opt.state[p]["step"]) for p in params] == [3.0, 3.0, 3.0]
    assert float(opt.last_grad_norm) == pytest.approx(3**0.5)


def test_only_zero_size_tensors(triton_backend):
    p = torch.zeros(0, requires_grad=True)
    p.grad = torch.zeros(0)
    opt = fusedlr.AdamW([p], max_grad_norm=1.0, schedule=schedules.WarmupLinear(1, 3), backend=triton_backend)
    opt.step()
    assert float(opt.last_grad_norm) == 0.0 and float(opt.state[p]["step"]) == 1.0


def test_norm_pass_is_deterministic(triton_backend):
    params = make_params([(4097,), (3, 5, 7), (1000,)])
    grads = [torch.randn_like(p) * 1e3 for p in params]
    norms = []
    for _ in range(2):
        copies = [p.detach().clone().requires_grad_() for p in params]
        opt = fusedlr.AdamW(copies, max_grad_norm=1.0, backend=triton_backend)
        for c, g in zip(copies, grads):
            c.grad = g.clone()
        opt.step()
        norms.append(opt.last_grad_norm.clone())
    assert torch.equal(norms[0], norms[1])


def test_new_grad_objects_over_the_same_memory_keep_the_plan(triton_backend):
    params = make_params([(5,), (6,)])
    opt = fusedlr.AdamW(params, backend=triton_backend)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    plan = opt._plan_cache
    for p in params:
        p.grad = p.grad.view_as(p)  # what zero_grad(set_to_none=True) + backward often gives
    opt.step()
    assert opt._plan_cache is plan


def test_swapped_param_storage_is_noticed(triton_backend):
    """``p.data = ...`` keeps the Parameter object and its grad; the step must follow the new memory."""
    ours, ref = make_params([(7,)]), make_params([(7,)])
    opt = fusedlr.AdamW(ours, lr=0.1, backend=triton_backend)
    ref_opt = torch.optim.AdamW(ref, lr=0.1, foreach=False)
    for p in ours + ref:
        p.grad = torch.ones_like(p)
    opt.step()
    ref_opt.step()
    ours[0].data = ours[0].data.clone() * 2
    ref[0].data = ref[0].data.clone() * 2
    opt.step()
    ref_opt.step()
    torch.testing.assert_close(ours[0].detach(), ref[0].detach())


def test_turning_amsgrad_on_later_creates_its_state(triton_backend):
    params = make_params([(4,)])
    opt = fusedlr.AdamW(params, backend=triton_backend)
    params[0].grad = torch.ones(4)
    opt.step()
    opt.param_groups[0]["amsgrad"] = True
    opt.step()
    assert "max_exp_avg_sq" in opt.state[params[0]]
    assert float(opt.state[params[0]]["step"]) == 2.0


def test_replaced_state_tensor_is_followed(triton_backend):
    """``opt.state[p]["exp_avg"] = ...`` between steps: the kernels write the new tensor, as torch does."""
    ours, ref = make_params([(9,)]), make_params([(9,)])
    opt = fusedlr.AdamW(ours, lr=0.1, backend=triton_backend)
    ref_opt = torch.optim.AdamW(ref, lr=0.1, foreach=False)
    for p in ours + ref:
        p.grad = torch.linspace(-1, 1, 9)
    for o in (opt, ref_opt):
        o.step()
    plan = opt._plan_cache
    for o, p in ((opt, ours[0]), (ref_opt, ref[0])):
        o.state[p]["exp_avg"] = o.state[p]["exp_avg"].clone() * 3
    old = opt.state[ours[0]]["exp_avg"]
    for o in (opt, ref_opt):
        o.step()
    assert opt._plan_cache is not plan
    torch.testing.assert_close(ours[0].detach(), ref[0].detach())
    torch.testing.assert_close(opt.state[ours[0]]["exp_avg"], ref_opt.state[ref[0]]["exp_avg"])
    assert opt.state[ours[0]]["exp_avg"] is old  # written in place, the new tensor


def test_replaced_state_dict_of_a_param_is_followed(triton_backend):
    params = make_params([(4,)])
    opt = fusedlr.AdamW(params, lr=0.1, backend=triton_backend)
    params[0].grad = torch.ones(4)
    opt.step()
    opt.state[params[0]] = {}  # a fresh start for this parameter
    opt.step()
    assert float(opt.state[params[0]]["step"]) == 1.0
    torch.testing.assert_close(opt.state[params[0]]["exp_avg"], torch.full((4,), 0.1))


def test_deep_copied_optimizer_steps_its_own_state(triton_backend):
    import copy

    params = make_params([(6,)])
    opt = fusedlr.AdamW(params, lr=0.1, backend=triton_backend)
    params[0].grad = torch.ones(6)
    opt.step()
    twin = copy.deepcopy(opt)
    before = twin.state[twin.param_groups[0]["params"][0]]["exp_avg"].clone()
    opt.step()  # must not write into the copy's state
    assert torch.equal(twin.state[twin.param_groups[0]["params"][0]]["exp_avg"], before)


def _with_odd_view():
    """Three float32 params and a float64 one viewed at an 8-byte offset (not 16-aligned)."""
    storage = torch.randn(3001, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    return make_params([(2048,), (1000,), (37, 11)]) + [storage[1:].requires_grad_()]


@pytest.mark.parametrize("kind", ["adamw", "amsgrad", "lion"])
def test_full_blocks_and_tails_and_unaligned_views_match_the_torch_backend(monkeypatch, triton_backend, kind):
    """A narrow BLOCK so that chunks have unmasked full blocks and a masked tail (the GPU's
    path), over an aligned bucket and one holding a view at an odd offset (scalar accesses)."""
    from helpers import assert_states_close, make_grads, run_steps

    import fusedlr._triton as launcher

    monkeypatch.setattr(launcher, "BLOCK", 256)
    options = dict(lr=1e-2, max_grad_norm=0.5, agc_clip_factor=0.05)

    def make(params, backend):
        if kind == "lion":
            return fusedlr.Lion(params, **options, weight_decay=0.1, backend=backend)
        return fusedlr.AdamW(params, **options, amsgrad=kind == "amsgrad", backend=backend)

    ours, ref = _with_odd_view(), _with_odd_view()
    assert ours[-1].data_ptr() % 16 == 8
    grads = make_grads(ours, 4)
    opt, ref_opt = make(ours, triton_backend), make(ref, "torch")
    run_steps(opt, ours, grads)
    run_steps(ref_opt, ref, grads)
    assert [(b.dtype, b.aligned) for b in opt._plan_cache.buckets] == [(torch.float32, True), (torch.float64, False)]
    assert_states_close(opt, ours, ref_opt, ref)
