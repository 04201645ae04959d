"""fusedlr under accelerate (CPU): accelerator.prepare(model, opt, scheduler) with the fused clip
against torch AdamW + accelerator.clip_grad_norm_ + LambdaLR, gradient accumulation, and a
GradScaler's skipped step through AcceleratedOptimizer."""

import math

import pytest
import torch

accelerate = pytest.importorskip("accelerate")

from accelerate import Accelerator  # noqa: E402
from accelerate.optimizer import AcceleratedOptimizer  # noqa: E402
from accelerate.state import AcceleratorState, GradientState  # noqa: E402

import fusedlr  # noqa: E402
from fusedlr.schedules import WarmupLinear  # noqa: E402

SCHEDULE = WarmupLinear(2, 12)
MICRO_BATCHES = 12


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 1))


def _loader():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4 * MICRO_BATCHES, 6, generator=gen)
    y = 10 * x[:, :1] - 4 * x[:, 1:2]
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)


def train(fused: bool, accelerate_clip: bool, fused_clip: float | None = 0.5):
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
    model = _model()
    if fused:
        opt = fusedlr.AdamW(model.parameters(), lr=3e-2, schedule=SCHEDULE, max_grad_norm=fused_clip)
        scheduler = fusedlr.AppliedLRScheduler(opt)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=3e-2, foreach=False)
        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, SCHEDULE)
    model, opt, loader, scheduler = accelerator.prepare(model, opt, _loader(), scheduler)
    lrs = []
    for x, y in loader:
        with accelerator.accumulate(model):
            loss = torch.nn.functional.mse_loss(model(x), y)
            accelerator.backward(loss)
            if accelerate_clip and accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), 0.5)
            opt.step()
            if accelerator.sync_gradients:
                lrs.append(float(scheduler.get_last_lr()[0]) if fused else opt.param_groups[0]["lr"])
            scheduler.step()
            opt.zero_grad()
    return model, opt, lrs


def test_prepare_with_the_fused_clip_matches_accelerate_clip_grad_norm():
    ref, _, ref_lrs = train(fused=False, accelerate_clip=True)
    mine, opt, lrs = train(fused=True, accelerate_clip=False)
    assert isinstance(opt, AcceleratedOptimizer) and isinstance(opt.optimizer, fusedlr.AdamW)
    updates = MICRO_BATCHES // 2
    assert int(opt.optimizer._schedule_step) == updates  # one schedule step per real update, not per micro-batch
    assert lrs == pytest.approx(ref_lrs, rel=1e-12) and len(lrs) == updates
    assert float(opt.optimizer.last_grad_norm) > 0.5  # clipping was active
    for p, q in zip(ref.parameters(), mine.parameters()):
        torch.testing.assert_close(q, p, rtol=2e-5, atol=2e-6)


def test_accelerate_clip_with_an_unclipped_fusedlr_gives_the_same_steps():
    """Allowed, but one more read and write of every grad: prefer the fused clip. (Both clips
    at once would clip twice and make last_grad_norm the already-clipped norm.)"""
    fused, _, _ = train(fused=True, accelerate_clip=False)
    both, opt, _ = train(fused=True, accelerate_clip=True, fused_clip=None)
    assert opt.optimizer.last_grad_norm is None
    for p, q in zip(fused.parameters(), both.parameters()):
        torch.testing.assert_close(q, p, rtol=2e-5, atol=2e-6)


def test_a_gradscaler_skip_inside_accelerated_optimizer():
    """accelerate hands the GradScaler's step to the optimizer; fusedlr skips a step with inf
    grads on the device (no update, no schedule step). accelerate cannot see that skip
    (step_was_skipped stays False): read opt.skipped_steps."""
    Accelerator(cpu=True)
    model = _model()
    inner = fusedlr.AdamW(model.parameters(), lr=1e-2, schedule=SCHEDULE, max_grad_norm=0.5)
    opt = AcceleratedOptimizer(inner, scaler=torch.amp.GradScaler("cpu", init_scale=2.0**8))
    x, y = next(iter(_loader()))
    after = []
    for bad in (False, True, False):
        loss = torch.nn.functional.mse_loss(model(x), y) * (math.inf if bad else 1.0)
        opt.scaler.scale(loss).backward()
        opt.step()
        opt.zero_grad()
        after.append([p.detach().clone() for p in model.parameters()])
    assert not opt.step_was_skipped
    assert int(inner.skipped_steps) == 1 and int(inner._schedule_step) == 2
    for p, q in zip(after[0], after[1]):
        assert torch.equal(p, q)  # the skipped step changed nothing
    assert float(inner.current_lr()[0]) == SCHEDULE.lr(1, 1e-2)
