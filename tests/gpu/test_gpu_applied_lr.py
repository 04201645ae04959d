"""opt.current_lr() / next_lr() on the GPU: no host synchronisation, and the lr each kernel
backend applied, for every schedule of the library, after steps and CUDA-graph replays."""

import math

import pytest
import torch
from helpers import capture_step
from test_schedule_library import BASE_LR, CASES, IDS

import fusedlr
from fusedlr import schedules as S

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_current_lr_is_the_lr_the_kernels_applied(kernel_backend, case):
    _, schedule, _, horizon = case
    probe = torch.zeros(1, dtype=torch.float64, device="cuda", requires_grad=True)
    opt = fusedlr.Lion([probe], lr=BASE_LR, betas=(0.5, 0.5), schedule=schedule, backend=kernel_backend)
    applied, shown = [], []
    for _ in range(min(horizon, 30)):
        before = probe.detach().clone()
        probe.grad = torch.ones_like(probe)
        opt.step()
        applied.append(before - probe.detach())
        shown.append(opt.current_lr()[0])
    for k, (a, s) in enumerate(zip(torch.cat(applied).tolist(), torch.stack(shown).tolist())):
        assert math.isclose(s, a, rel_tol=1e-12, abs_tol=1e-15), f"k={k}: shown {s}, applied {a}"


def test_reading_the_lr_does_not_synchronise(kernel_backend):
    params = [torch.nn.Parameter(torch.randn(1000, device="cuda")) for _ in range(3)]
    opt = fusedlr.AdamW(params, lr=1e-3, schedule=S.WarmupCosine(10, 100, min_lr_ratio=0.1), max_grad_norm=1.0,
                        backend=kernel_backend)  # fmt: skip
    scheduler = fusedlr.AppliedLRScheduler(opt)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()  # builds the tables (uploads): outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            opt.step()
            lrs = scheduler.get_last_lr() + opt.next_lr()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert float(lrs[0]) == pytest.approx(S.WarmupCosine(10, 100, min_lr_ratio=0.1).lr(3, 1e-3), rel=1e-12)


def test_current_lr_follows_graph_replays(kernel_backend):
    schedule = S.WarmupLinear(3, 20)
    param = torch.nn.Parameter(torch.zeros(256, device="cuda"))
    param.grad = torch.ones_like(param)
    opt = fusedlr.AdamW([param], lr=0.1, schedule=schedule, backend=kernel_backend)
    graph = capture_step(opt)
    for k in range(2, 6):  # the capture ran update 1 (captured work does not run); replays run 1, 2, ...
        graph.replay()
        assert float(opt.current_lr()[0]) == pytest.approx(schedule.lr(k - 1, 0.1), rel=1e-12)
