"""A small training loop that swaps torch.optim.AdamW (+ clip_grad_norm_ + LambdaLR) for fusedlr.

    python examples/train_tiny.py [--steps 200] [--device cuda]

It trains the same tiny model twice from the same seed, once with the hand-written torch step
and once with fusedlr's fused step, and prints both loss curves and how far apart the final
weights are.
"""

import argparse

import torch
from torch import nn

import fusedlr
from fusedlr import schedules


def make_model(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Embedding(64, 32), nn.Flatten(), nn.Linear(8 * 32, 128), nn.GELU(), nn.Linear(128, 64))


def batches(steps, device, seed=1):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randint(0, 64, (32, 8), generator=gen)
        yield x.to(device), x[:, 0].to(device)  # toy task: repeat the first token


def train(use_fusedlr, steps, device):
    model = make_model(0).to(device)
    schedule = schedules.WarmupCosine(warmup_steps=20, total_steps=steps, min_lr_ratio=0.1)
    if use_fusedlr:
        # The one-line change: schedule and clipping move into the optimizer step.
        opt = fusedlr.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1, schedule=schedule, max_grad_norm=1.0)
        sched = None
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    losses = []
    for x, y in batches(steps, device):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        if not use_fusedlr:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(loss.item())
    return model, losses


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    by_hand, torch_losses = train(False, args.steps, args.device)
    fused, fused_losses = train(True, args.steps, args.device)
    for step in range(0, args.steps, max(1, args.steps // 10)):
        print(f"step {step:4d}  torch {torch_losses[step]:.4f}  fusedlr {fused_losses[step]:.4f}")
    diff = max((a - b).abs().max().item() for a, b in zip(by_hand.parameters(), fused.parameters()))
    print(f"final loss: torch {torch_losses[-1]:.4f}, fusedlr {fused_losses[-1]:.4f}; max weight difference {diff:.2e}")


if __name__ == "__main__":
    main()
