"""fusedlr's cpu backend against torch's fused AdamW + clip_grad_norm_ with the clip ACTIVE at
every step (the harness of ``python -m fusedlr.bench`` keeps it inactive, because torch's
in-place clip would change later steps' grads):

    PYTHONPATH=. python benchmarks/cpu_active_clip.py --case llama_cpu --threads 1

Both start every timed step from the same unclipped grads (restored untimed) with the caches
evicted (64 MiB read), alternating which runs first; prints the medians and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import fusedlr
from fusedlr import bench


def _contender(kind, shapes):
    base, grads = bench._params_and_grads(shapes, torch.device("cpu"))
    grads = [g * 20 for g in grads]  # global norm 10: a clip at 1.0 is active at every step
    params = [p.clone().requires_grad_() for p in base]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    if kind == "fusedlr-cpu":
        step = fusedlr.AdamW(params, lr=1e-3, weight_decay=0.1, max_grad_norm=1.0, backend="cpu").step
    else:
        opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1, fused=True)

        def step():
            torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
            opt.step()

    def restore():
        for p, g in zip(params, grads):
            p.grad.copy_(g)

    return step, restore


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="gpt2_cpu", choices=sorted(c for c in bench.CASES if c.endswith("_cpu")))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = bench.CASES[args.case]()
    runs = {name: _contender(name, shapes) for name in ("fusedlr-cpu", "torch-adamw-fused+clip")}
    flush = torch.ones(1 << 24)
    times = {name: [] for name in runs}
    for i in range(args.steps + 10):
        for name in list(runs) if i % 2 else list(runs)[::-1]:
            step, restore = runs[name]
            restore()
            flush.sum()
            start = time.perf_counter()
            step()
            if i >= 10:
                times[name].append(time.perf_counter() - start)
    ms = {name: statistics.median(values) * 1e3 for name, values in times.items()}
    ratio = ms["torch-adamw-fused+clip"] / ms["fusedlr-cpu"]
    measured = ", ".join(f"{name} {value:.3f} ms" for name, value in ms.items())
    print(f"{args.case}, {torch.get_num_threads()} thread(s), active clip: {measured}; fusedlr-cpu {ratio:.2f}x")


if __name__ == "__main__":
    main()
