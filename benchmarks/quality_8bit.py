"""Training quality of 8-bit moments and split master weights: a small GPT (tests/tiny_gpt.py)
trained in bf16 on the CPU with the same data, lr, schedule (warmup-cosine), clip (1.0) and
weight decay (0.1), several ways:

    PYTHONPATH=. python benchmarks/quality_8bit.py --steps 400 --width 64

* ``fp32-master (torch AdamW)``: torch AdamW on fp32 copies of the bf16 params (16 bytes/param);
* ``fusedlr master``: ``master_weights=True`` (fp32 master and moments, 16 bytes/param);
* ``fusedlr int8 + master``: ``state_dtype="int8", master_weights=True`` (10 bytes/param);
* ``fusedlr int8 + split``: ``state_dtype="int8", master_weights="split"`` (7 bytes/param);
* ``bitsandbytes AdamW8bit`` and ``torchao AdamW8bit`` inside the same fp32-master loop (their
  8-bit moments, an fp32 master: 10 bytes/param), where they install and run on the CPU.
  (FlashOptim needs a CUDA device: its fused step refuses CPU tensors.)

Prints the mean loss of the first 10 and last 50 steps of each run and the gap of the last 50
to the fp32-master run's.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import tiny_gpt  # noqa: E402


def contenders(backend: str = "auto") -> dict:
    runs = {
        "fp32-master (torch AdamW)": tiny_gpt.fp32_master_reference,
        "fusedlr master": tiny_gpt.with_fusedlr(master_weights=True, backend=backend),
        "fusedlr int8 + master": tiny_gpt.with_fusedlr(master_weights=True, state_dtype="int8", backend=backend),
        "fusedlr int8 + split": tiny_gpt.with_fusedlr(master_weights="split", state_dtype="int8", backend=backend),
    }
    try:
        import bitsandbytes as bnb

        runs["bitsandbytes AdamW8bit"] = tiny_gpt.fp32_master_loop(
            lambda masters: bnb.optim.AdamW8bit(masters, lr=3e-3, weight_decay=0.1)
        )
    except Exception as error:  # not installed, or no CPU build
        print(f"(bitsandbytes skipped: {error})")
    try:
        from torchao.optim import AdamW8bit

        runs["torchao AdamW8bit"] = tiny_gpt.fp32_master_loop(
            lambda masters: AdamW8bit(masters, lr=3e-3, weight_decay=0.1)
        )
    except Exception as error:
        print(f"(torchao skipped: {error})")
    return runs


def run(steps: int, width: int, names=None, backend: str = "auto") -> dict:
    """``{name: per-step losses}`` for the contenders (all of them, or ``names``)."""
    losses = {}
    for name, make in contenders(backend).items():
        if names is None or name in names:
            losses[name] = tiny_gpt.train(make, "cpu", steps, width)
    return losses


def summary(losses: dict) -> list[tuple[str, float, float, float]]:
    """(name, first-10 mean, last-50 mean, relative gap of the last 50 to the fp32-master run)."""
    reference = losses["fp32-master (torch AdamW)"][-50:].mean().item()
    return [
        (name, curve[:10].mean().item(), curve[-50:].mean().item(), curve[-50:].mean().item() / reference - 1)
        for name, curve in losses.items()
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--width", type=int, default=64)
    args = parser.parse_args()
    start = time.perf_counter()
    losses = run(args.steps, args.width)
    print(f"TinyGPT width {args.width}, {args.steps} steps, bf16 on the CPU ({time.perf_counter() - start:.0f} s)")
    print("| run | loss, first 10 steps | loss, last 50 steps | gap to fp32-master |")
    print("| --- | ---: | ---: | ---: |")
    for name, first, last, gap in summary(losses):
        print(f"| {name} | {first:.4f} | {last:.4f} | {gap:+.2%} |")


if __name__ == "__main__":
    main()
