"""fusedlr in Lightning (CPU, fp32 and bf16-mixed): the recipe against Lightning's torch AdamW +
LambdaLR + gradient_clip_val, the lr monitor's values, and the refusal of gradient_clip_val."""

import pytest
import torch

L = pytest.importorskip("lightning")

from lightning.pytorch.callbacks import LearningRateMonitor as LightningLearningRateMonitor  # noqa: E402
from lightning.pytorch.loggers import Logger  # noqa: E402

import fusedlr  # noqa: E402
from fusedlr.integrations.lightning import LearningRateMonitor  # noqa: E402
from fusedlr.schedules import WarmupCosine  # noqa: E402

STEPS = 8
SCHEDULE = WarmupCosine(3, STEPS, min_lr_ratio=0.1)


class MemoryLogger(Logger):
    def __init__(self):
        super().__init__()
        self.metrics = []

    @property
    def name(self):
        return "memory"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.metrics.append((step, dict(metrics)))


class Regression(L.LightningModule):
    def __init__(self, fused: bool):
        super().__init__()
        torch.manual_seed(0)
        layers = [torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.GELU(), torch.nn.Linear(16, 1)]
        self.net = torch.nn.Sequential(*layers)
        self.fused = fused
        self.grad_norms = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x).float(), y)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.fused:  # the pre-clip norm of the fused step: a device tensor, read when logged
            self.grad_norms.append(float(self.optimizers().last_grad_norm))

    def configure_optimizers(self):
        decay = [p for n, p in self.named_parameters() if n.endswith("weight") and p.ndim == 2]
        no_decay = [p for n, p in self.named_parameters() if not (n.endswith("weight") and p.ndim == 2)]
        groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
        if self.fused:  # the recipe: schedule and clip inside the optimizer, no lr scheduler
            return fusedlr.AdamW(groups, lr=3e-2, schedule=SCHEDULE, max_grad_norm=0.5)
        opt = torch.optim.AdamW(groups, lr=3e-2, foreach=False)
        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, SCHEDULE)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _data():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=gen)
    y = (x[:, :1] * 3 - x[:, 1:2] + 0.1 * torch.randn(64, 1, generator=gen)) * 5
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)


def fit(fused, precision, monitor, **trainer_kwargs):
    module, logger = Regression(fused), MemoryLogger()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=STEPS, precision=precision, logger=logger, callbacks=[monitor],
        log_every_n_steps=1, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        **trainer_kwargs,
    )  # fmt: skip
    trainer.fit(module, _data())
    lrs = [m["lr-AdamW/pg1"] for _, m in logger.metrics if "lr-AdamW/pg1" in m]
    return module, lrs


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_recipe_matches_lightning_with_torch_adamw(precision):
    ref, ref_lrs = fit(False, precision, LightningLearningRateMonitor("step"), gradient_clip_val=0.5)
    mine, lrs = fit(True, precision, LearningRateMonitor("step"))
    assert lrs == pytest.approx(ref_lrs, rel=1e-12, abs=0) and len(lrs) == STEPS
    # The lr each batch's update applied, not the base 3e-2.
    assert lrs[:3] == pytest.approx([0.0, 1e-2, 2e-2], rel=1e-15)
    assert max(mine.grad_norms) > 0.5  # the clip was active
    for (name, p), q in zip(ref.named_parameters(), mine.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_gradient_clip_val_beside_fusedlr_is_refused_with_the_fix(precision):
    with pytest.raises(ValueError, match=r"Pass max_grad_norm=0.5 to fusedlr.AdamW"):
        fit(True, precision, LearningRateMonitor("step"), gradient_clip_val=0.5)
