"""Host-side cost of one step with cached tables (pytest benchmarks --benchmark-only).

On any machine: the plan-cache check and hyperparameter upload that every fused step runs
before its launches. On a GPU: the whole ``opt.step()`` as the host sees it (launches are
asynchronous), for fusedlr's kernel backends and torch's fused AdamW on the same tensors.
"""

import pytest
import torch

import fusedlr
from fusedlr import schedules

COUNTS = [10, 100, 2000]


def _params(count, device):
    params = [torch.zeros(256, device=device, requires_grad=True) for _ in range(count)]
    for p in params:
        p.grad = torch.ones_like(p)
    return params


class _NoLaunch:
    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


@pytest.mark.parametrize("zero_grad_to_none", [False, True], ids=["same-grads", "new-grads"])
@pytest.mark.parametrize("count", COUNTS)
def test_host_path_of_a_step(benchmark, monkeypatch, count, zero_grad_to_none):
    """opt.step() with the Triton launches replaced by no-ops: everything the host does per step
    (checks, cache key, hyperparameter upload). With new grads, as zero_grad(set_to_none=True)
    leaves them, each new grad tensor is checked."""
    pytest.importorskip("triton")
    from fusedlr._triton import kernels

    for name in ("_grad_sumsq_kernel", "_tensor_sumsq_kernel", "_finalize_kernel", "_update_kernel"):
        monkeypatch.setattr(kernels, name, _NoLaunch())
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # lets the triton backend take CPU tensors
    params = _params(count, "cpu")
    opt = fusedlr.AdamW(params, max_grad_norm=1.0, schedule=schedules.WarmupCosine(10, 1000), backend="triton")
    opt.step()
    plan = opt._plan_cache

    def new_grads():  # outside the timed region: assigning .grad costs the caller, not the step
        if zero_grad_to_none:
            for p in params:
                p.grad = p.grad.view_as(p)  # a new tensor object over the same memory

    benchmark.pedantic(opt.step, setup=new_grads, rounds=max(50, 20_000 // count), warmup_rounds=3)
    assert opt._plan_cache is plan  # the tables were reused, not rebuilt


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@gpu
@pytest.mark.parametrize("count", COUNTS)
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_fusedlr_step_host_time(benchmark, backend, count):
    if backend not in fusedlr.available_backends():
        pytest.skip(f"{backend} backend unavailable")
    params = _params(count, "cuda")
    opt = fusedlr.AdamW(params, max_grad_norm=1.0, schedule=schedules.WarmupCosine(10, 1000), backend=backend)
    opt.step()
    torch.cuda.synchronize()
    benchmark.pedantic(opt.step, rounds=200, warmup_rounds=5)
    torch.cuda.synchronize()


@gpu
@pytest.mark.parametrize("count", COUNTS)
def test_torch_fused_adamw_step_host_time(benchmark, count):
    params = _params(count, "cuda")
    opt = torch.optim.AdamW(params, fused=True)
    opt.step()
    torch.cuda.synchronize()
    benchmark.pedantic(opt.step, rounds=200, warmup_rounds=5)
    torch.cuda.synchronize()
