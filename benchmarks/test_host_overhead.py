"""Host-side cost of one step with cached tables (pytest benchmarks --benchmark-only).

On any machine: the plan-cache check and hyperparameter upload that every fused step runs
before its launches. On a GPU: the whole ``opt.step()`` as the host sees it (launches are
asynchronous), for fusedlr's kernel backends and torch's fused AdamW on the same tensors.
"""

import pytest
import torch

import fusedlr
from fusedlr import _fused, schedules

COUNTS = [10, 100, 2000]


def _params(count, device):
    params = [torch.zeros(256, device=device, requires_grad=True) for _ in range(count)]
    for p in params:
        p.grad = torch.ones_like(p)
    return params


@pytest.mark.parametrize("count", COUNTS)
def test_cached_plan_check_and_upload(benchmark, count):
    params = _params(count, "cpu")
    opt = fusedlr.AdamW(params, max_grad_norm=1.0, schedule=schedules.WarmupCosine(10, 1000))
    group = opt.param_groups[0]
    items = [(p, group, opt._init_state(p, group)) for p in params]
    plan, _ = _fused.prepare(opt, items, None)
    benchmark(_fused.prepare, opt, items, None)
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
