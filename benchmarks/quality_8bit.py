"""Training quality of 8-bit moments and split master weights: a small GPT (tests/tiny_gpt.py)
trained in bf16 on the CPU with the same data, lr, schedule (warmup-cosine), clip (1.0) and
weight decay (0.1), several ways:

    PYTHONPATH=. python benchmarks/quality_8bit.py --steps 400 --width 64 --seeds 3
    PYTHONPATH=. python benchmarks/quality_8bit.py --device cuda --width 512   # on a GPU: + peak memory

* ``fp32-master (torch AdamW)``: torch AdamW on fp32 copies of the bf16 params (16 bytes/param);
* ``fusedlr master``: ``master_weights=True`` (fp32 master and moments, 16 bytes/param);
* ``fusedlr int8 + master``: ``state_dtype="int8", master_weights=True`` (10 bytes/param);
* ``fusedlr int8 + split``: ``state_dtype="int8", master_weights="split"`` (7 bytes/param);
* ``bitsandbytes AdamW8bit`` and ``torchao AdamW8bit`` inside the same fp32-master loop (their
  8-bit moments, an fp32 master: 10 bytes/param), where they install and run on the CPU.
* ``FlashOptim FlashAdamW`` (on a GPU only: its fused step refuses CPU tensors), on the bf16
  params as its users run it: 8-bit moments and a 24-bit master (an int8 correction of each bf16
  weight), FlashOptim's 7 bytes/param configuration, with ``clip_grad_norm_`` and ``LambdaLR``.

Prints the mean loss of the first 10 and last 50 steps of each run and the gap of the last 50
to the fp32-master run's (with ``--seeds N``: means over N seeds of weights and data order, and
the lowest and highest seed's gap, each against the fp32-master run of its seed); on a GPU also
each run's peak allocated memory (model, activations, grads and optimizer state together: the
differences are the optimizer's bytes).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import tiny_gpt  # noqa: E402


def _flashoptim(model, steps):
    from flashoptim import FlashAdamW

    params = list(model.parameters())
    opt = FlashAdamW(params, lr=3e-3, weight_decay=0.1, quantize=True, master_weight_bits=24)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, tiny_gpt._schedule(steps))

    def step():
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()

    return step


def contenders(backend: str = "auto", device: str = "cpu") -> dict:
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
    if device != "cpu":
        runs["FlashOptim FlashAdamW (24-bit master, 8-bit moments)"] = _flashoptim
    return runs


def run(steps: int, width: int, names=None, backend: str = "auto", device: str = "cpu", peaks=None,
        progress=None, seed: int = 0) -> dict:  # fmt: skip
    """``{name: per-step losses}`` for the contenders (all of them, or ``names``); on a GPU each
    run's peak allocated bytes go into ``peaks`` when given. A peer that cannot run here (an
    optional package missing) is reported and left out; fusedlr's runs and the reference raise.
    ``progress`` (e.g. ``print``) gets a line per finished run, so a run cut short keeps them.
    ``seed`` picks the initial weights and the data order, the same for every contender."""
    losses = {}
    for name, make in contenders(backend, device).items():
        if names is not None and name not in names:
            continue
        if device != "cpu":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        began = time.perf_counter()
        try:
            losses[name] = tiny_gpt.train(make, device, steps, width, seed)
        except Exception as error:
            if name.startswith(("fusedlr", "fp32-master")):
                raise
            print(f"({name} skipped: {type(error).__name__}: {error})")
            continue
        if device != "cpu" and peaks is not None:
            peaks[name] = torch.cuda.max_memory_allocated(device)
        if progress is not None:
            peak = f", peak {peaks[name] / 2**20:.0f} MB" if peaks and name in peaks else ""
            last = losses[name][-50:].mean().item()
            progress(f"{name} (seed {seed}): {time.perf_counter() - began:.0f} s, last-50 loss {last:.4f}{peak}")
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
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (adds FlashOptim and peak memory)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 (weights and data order): the "
                        "gaps' spread over seeds says how much of a gap is noise")  # fmt: skip
    args = parser.parse_args()
    start = time.perf_counter()
    peaks = {}
    progress = partial(print, flush=True)
    rows_by_seed = [
        summary(run(args.steps, args.width, device=args.device, peaks=peaks, progress=progress, seed=seed))
        for seed in range(args.seeds)
    ]
    where = "the CPU" if args.device == "cpu" else torch.cuda.get_device_name(args.device)
    seeds = f", {args.seeds} seeds" if args.seeds > 1 else ""
    took = f"{time.perf_counter() - start:.0f} s"
    print(f"TinyGPT width {args.width}, {args.steps} steps, bf16 on {where}{seeds} ({took})")
    spread = " gap, lowest .. highest seed |" if args.seeds > 1 else ""
    memory = " peak MB |" if peaks else ""
    print(f"| run | loss, first 10 steps | loss, last 50 steps | gap to fp32-master |{spread}{memory}")
    print("| --- | ---: | ---: | ---: |" + (" ---: |" if spread else "") + (" ---: |" if peaks else ""))
    for name, first, last, gap, gaps in _over_seeds(rows_by_seed):
        low_high = f" {min(gaps):+.2%} .. {max(gaps):+.2%} |" if spread else ""
        peak = f" {peaks[name] / 2**20:.0f} |" if name in peaks else ""
        print(f"| {name} | {first:.4f} | {last:.4f} | {gap:+.2%} |{low_high}{peak}")


def _over_seeds(rows_by_seed: list) -> list:
    """(name, mean first-10 loss, mean last-50 loss, mean gap, each seed's gap) for the runs every
    seed has (a peer skipped on one seed is left out rather than averaged over fewer)."""
    by_name = {}
    for rows in rows_by_seed:
        for name, first, last, gap in rows:
            by_name.setdefault(name, []).append((first, last, gap))
    return [
        (name, *(sum(column) / len(column) for column in zip(*values)), [gap for _, _, gap in values])
        for name, values in by_name.items()
        if len(values) == len(rows_by_seed)
    ]


if __name__ == "__main__":
    main()
