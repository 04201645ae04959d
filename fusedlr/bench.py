"""Throughput of one whole optimizer step, as users run it: clip + schedule + update.

    python -m fusedlr.bench [--optimizer adamw|lion|sgd|schedulefree|all] [--case gpt2] [--steps 50] [--quick]

Every contender starts from the same parameters and gradients and runs the same clip
(max norm 1.0) and warmup-cosine schedule; after its timed steps its parameters are compared
with the first contender's, so no figure comes from a wrong step. Rows are appended to
``benchmarks/results/results.csv`` with the device name, versions and commit.

On a CPU-only machine the cases are shrunk and the figures are labelled CPU: they compare the
``cpu`` backend (and the ``torch`` reference) with torch on this CPU, and say nothing about GPU
speed. ``--threads N`` runs on N of the cores (torch.set_num_threads).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import importlib
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import fusedlr
from fusedlr import schedules

MAX_GRAD_NORM = 1.0
SCHEDULE = schedules.WarmupCosine(warmup_steps=10, total_steps=1_000, min_lr_ratio=0.1)
# Bytes per parameter a fused step must move (README, "Byte model"): the same figure is used
# for every contender of a case, so GB/s compares time against the fused roofline; in bfloat16
# cases each fusedlr variant counts its own storage.
BYTES_PER_PARAM = {"adamw": 32, "lion": 24, "sgd": 24, "schedulefree": 32}
OPTIMIZERS = tuple(BYTES_PER_PARAM)
# Every contender of an optimizer gets the same hyperparameters (SGD: with momentum; schedule-free:
# the case's schedule on top of its own warmup, as a LambdaLR on the package's group lr).
HYPERS = {
    "adamw": dict(lr=1e-3, weight_decay=0.1),
    "lion": dict(lr=1e-3, weight_decay=0.1),
    "sgd": dict(lr=1e-3, momentum=0.9, weight_decay=0.1),
    "schedulefree": dict(lr=1e-3, weight_decay=0.1, warmup_steps=10),
}
BF16_BYTES_PER_PARAM = {"adamw": 16, "lion": 12}  # bf16 param, grad (read twice) and states
RESULTS_CSV = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "results.csv"
CSV_COLUMNS = [
    "date", "commit", "device", "torch", "triton", "cuda", "case", "optimizer", "contender", "dtype",
    "numel", "tensors", "ms_p20", "ms_p50", "ms_p80", "gbps", "copy_gbps", "fraction_of_copy", "peak_mem_mb",
    "first_step_s",
]  # fmt: skip


# ----- parameter layouts shaped like real models -----------------------------------------------


def gpt2_layout(vocab=50257, positions=1024, width=768, layers=12):
    """GPT-2's parameter shapes (124M for the defaults; the LM head is tied to wte)."""
    shapes = [(vocab, width), (positions, width)]
    for _ in range(layers):
        shapes += [(width,), (width,), (width, 3 * width), (3 * width,), (width, width), (width,)]
        shapes += [(width,), (width,), (width, 4 * width), (4 * width,), (4 * width, width), (width,)]
    return shapes + [(width,), (width,)]


def llama_layout(vocab=32_000, width=2048, layers=16, ffn=5632):
    """A Llama-style decoder (about 0.95B for the defaults): untied embedding and head, per layer
    q/k/v/o, a SwiGLU MLP (gate, up, down) and two RMSNorm weights, then a final norm."""
    shapes = [(vocab, width)]
    for _ in range(layers):
        shapes += [(width, width)] * 4 + [(ffn, width), (ffn, width), (width, ffn)] + [(width,), (width,)]
    return shapes + [(width,), (vocab, width)]


def many_small_layout(count=2_000, numel=65_536):
    return [(numel,)] * count


CASES = {
    "gpt2": lambda: gpt2_layout(),
    "llama_1b": lambda: llama_layout(),
    "many_small": lambda: many_small_layout(),
    "one_big": lambda: [(256 * 2**20,)],
    # CPU-sized stand-ins: the same structure, small enough for a laptop-class CPU.
    "gpt2_cpu": lambda: gpt2_layout(vocab=4096, positions=256, width=128, layers=2),
    "llama_cpu": lambda: llama_layout(vocab=4096, width=256, layers=2, ffn=704),
    "many_small_cpu": lambda: many_small_layout(count=200, numel=1_024),
    "one_big_cpu": lambda: [(2**22,)],
}
BF16_CASES = {"gpt2", "llama_1b", "gpt2_cpu", "llama_cpu"}  # the bfloat16 rows: real LLM layouts
DEFAULT_CASES = {"cuda": ["gpt2", "llama_1b", "many_small", "one_big"], "cpu": ["gpt2_cpu", "many_small_cpu"]}


# ----- contenders ---------------------------------------------------------------------------------


@dataclass
class Contender:
    name: str
    make: callable  # params -> step function
    bytes_per_param: int | None = None  # None: the case's fused figure
    # The schedulefree package divides .grad in place every step, so with the harness's fixed
    # grads its weights leave the others' after the first step: same work, no parity check.
    rewrites_grads: bool = False


# bfloat16 params (grads bf16 too): fusedlr's three ways to train them, against torch's
# fused AdamW on the same bf16 tensors. Bytes per param with fused clip (README, "Byte model").
BF16_VARIANTS = {
    "master": (dict(master_weights=True), {"adamw": 30, "lion": 22}),
    "master+bf16-states": (dict(master_weights=True, state_dtype=torch.bfloat16), {"adamw": 22, "lion": 18}),
    "stochastic": (dict(stochastic_rounding=True), {"adamw": 16, "lion": 12}),
    # 8-bit moments (+ 4/256 byte of scales per moment each way, left out of these integers).
    "master+int8-states": (dict(master_weights=True, state_dtype="int8"), {"adamw": 18, "lion": 16}),
    "split+int8-states": (dict(master_weights="split", state_dtype="int8"), {"adamw": 14, "lion": 12}),
}


def _fusedlr(optimizer, backend, variant=None):
    cls = _FUSEDLR_CLASSES[optimizer]
    options, nbytes = BF16_VARIANTS[variant] if variant else ({}, {})

    def make(params):
        opt = cls(params, **HYPERS[optimizer], schedule=SCHEDULE, max_grad_norm=MAX_GRAD_NORM, backend=backend,
                  **options)  # fmt: skip
        if optimizer == "schedulefree":
            opt.train()
        return opt.step

    name = f"fusedlr-{backend}" + (f"-{variant}" if variant else "")
    return Contender(name, make, nbytes.get(optimizer))


_FUSEDLR_CLASSES = {"adamw": fusedlr.AdamW, "lion": fusedlr.Lion, "sgd": fusedlr.SGD,
                    "schedulefree": fusedlr.AdamWScheduleFree}  # fmt: skip


def _by_hand(name, make_optimizer, compiled=False, rewrites_grads=False):
    """The step users write today: clip_grad_norm_(foreach=True), optimizer.step(), LambdaLR."""

    def make(params):
        opt = make_optimizer(params)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, SCHEDULE)

        def clip_and_step():
            torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM, foreach=True)
            opt.step()

        if compiled:
            # A fresh compile per case, as a user's first run: without the reset, dynamo
            # recompiles the same code for the next case with dynamic shapes (slower, and in
            # torch 2.11 it fails on the 1B layout: "sources must not be empty for symbol").
            torch._dynamo.reset()
        update = torch.compile(clip_and_step) if compiled else clip_and_step

        def step():
            update()
            sched.step()

        return step

    return Contender(name, make, rewrites_grads=rewrites_grads)


def _torch_adamw(flavour):
    return _by_hand(f"torch-adamw-{flavour}+clip", lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.1,
                                                                              **{flavour: True}))  # fmt: skip


def _torch_adamw_compiled():
    # A tensor lr, so that LambdaLR's new value every step does not recompile (torch's advice).
    return _by_hand("torch-adamw-compiled+clip",
                    lambda p: torch.optim.AdamW(p, lr=torch.tensor(1e-3), weight_decay=0.1),
                    compiled=True)  # fmt: skip


def _lion_pytorch(use_triton):
    def make_optimizer(params):
        from lion_pytorch import Lion

        return Lion(params, lr=1e-3, weight_decay=0.1, use_triton=use_triton)

    return _by_hand(f"lion-pytorch{'-triton' if use_triton else ''}+clip", make_optimizer)


def _torch_sgd(flavour):
    return _by_hand(f"torch-sgd-{flavour}+clip", lambda p: torch.optim.SGD(p, **HYPERS["sgd"], **{flavour: True}))


def _schedulefree_package():
    def make_optimizer(params):
        import schedulefree

        opt = schedulefree.AdamWScheduleFree(params, **HYPERS["schedulefree"], foreach=True)
        opt.train()
        return opt

    return _by_hand("schedulefree+clip", make_optimizer, rewrites_grads=True)


BASELINES = {
    "adamw": {
        "foreach": lambda: _torch_adamw("foreach"),
        "fused": lambda: _torch_adamw("fused"),
        "compile": _torch_adamw_compiled,
    },
    "lion": {"lion-pytorch": lambda: _lion_pytorch(False), "lion-pytorch-triton": lambda: _lion_pytorch(True)},
    "sgd": {"foreach": lambda: _torch_sgd("foreach"), "fused": lambda: _torch_sgd("fused")},
    "schedulefree": {"schedulefree": _schedulefree_package},
}
# Inductor on a CPU compiles for minutes (torchao's 8-bit AdamW is compiled); FlashOptim's
# quantised states refuse CPU tensors.
GPU_ONLY_BASELINES = {"compile", "lion-pytorch-triton", "torchao-8bit", "flashoptim"}


def _lean_peer(name, module, attribute, **options):
    """A peer's AdamW with lean state, imported when its row is made (an optional install)."""

    def make_optimizer(params):
        optimizer = getattr(importlib.import_module(module), attribute)
        return optimizer(params, lr=1e-3, weight_decay=0.1, **options)

    return lambda: _by_hand(name, make_optimizer)


# The bfloat16 rows' peers with lean state, on the bf16 params as their users run them: each is an
# optional install, and a row says "failed" where one cannot run. Not in the fp32 rows: their
# 8-bit states make a different update, which the fp32 parity check would reject.
BF16_PEERS = {
    "adamw": {
        # FlashOptim's 7-byte configuration: 8-bit moments and a bf16 param with an 8-bit residual
        # (24-bit master weights), fused Triton kernels: fusedlr's split+int8-states counterpart.
        "flashoptim": _lean_peer("flashoptim-adamw-24bit+clip", "flashoptim", "FlashAdamW", quantize=True,
                                 master_weight_bits=24),
        "bitsandbytes-8bit": _lean_peer("bitsandbytes-adamw8bit+clip", "bitsandbytes.optim", "AdamW8bit"),
        "torchao-8bit": _lean_peer("torchao-adamw8bit+clip", "torchao.optim", "AdamW8bit"),
    }
}  # fmt: skip


def contenders(optimizer: str, device: torch.device, baselines=None, dtype=torch.float32) -> list[Contender]:
    if dtype == torch.bfloat16:
        # The baseline first: the fusedlr variants round differently, each is checked against it.
        backend = "triton" if device.type == "cuda" else "cpu"
        ours = [_fusedlr(optimizer, backend, variant) for variant in BF16_VARIANTS]
        peers = BF16_PEERS.get(optimizer, {})
        if baselines is None:
            baselines = ["fused", *peers] if optimizer == "adamw" else ["lion-pytorch"]
            baselines = [b for b in baselines if device.type == "cuda" or b not in GPU_ONLY_BASELINES]
        return [{**BASELINES[optimizer], **peers}[b]() for b in baselines] + ours
    # The reference first (the others are checked against it), then the backends for this device
    # that implement this optimizer (the cuda extension has no SGD, no schedule-free).
    runs_here = {"cuda": ("torch", "triton", "cuda"), "cpu": ("torch", "cpu")}.get(device.type, ("torch",))
    kind_backends = _FUSEDLR_CLASSES[optimizer]._kind_backends
    ours = [_fusedlr(optimizer, b) for b in fusedlr.available_backends() if b in runs_here and b in kind_backends]
    if baselines is None:
        baselines = [b for b in BASELINES[optimizer] if device.type == "cuda" or b not in GPU_ONLY_BASELINES]
    unknown = set(baselines) - set(BASELINES[optimizer])
    if unknown:
        raise SystemExit(
            f"unknown baselines for {optimizer}: {sorted(unknown)} (choose from {list(BASELINES[optimizer])})"
        )
    return ours + [BASELINES[optimizer][b]() for b in baselines]


# ----- measurement --------------------------------------------------------------------------------


def _timer(device):
    if device.type == "cuda":

        def time_ms(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)

    else:

        def time_ms(fn):
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3

    return time_ms


def copy_bandwidth_gbps(device, numel=1 << 27, repeats=20) -> float:
    """Device-to-device copy, read + write counted: the bandwidth a step can hope for."""
    if device.type == "cpu":
        numel = 1 << 24
    src = torch.empty(numel, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    time_ms = _timer(device)
    for _ in range(3):
        dst.copy_(src)
    ms = statistics.median(time_ms(lambda: dst.copy_(src)) for _ in range(repeats))
    return 2 * src.numel() * src.element_size() / (ms * 1e6)


def _params_and_grads(shapes, device, seed=0, dtype=torch.float32):
    # Drawn on the device itself: a 1B-parameter case would take minutes on the host.
    gen = torch.Generator(device=device).manual_seed(seed)
    numel = sum(torch.Size(s).numel() for s in shapes)
    params, grads = [], []
    for shape in shapes:
        params.append(torch.randn(shape, generator=gen, device=device).to(dtype))
        # Global grad norm 0.5: below the clip threshold, so torch's in-place clip leaves the
        # grads as they are and every contender sees the same grads at every step. The work
        # done does not depend on it: torch always multiplies, fusedlr always runs its norm pass.
        grads.append((torch.randn(shape, generator=gen, device=device) * (0.5 / numel**0.5)).to(dtype))
    return params, grads


def measure(contender, shapes, device, warmup, steps, dtype=torch.float32):
    base, grads = _params_and_grads(shapes, device, dtype=dtype)
    params = [p.clone().requires_grad_() for p in base]
    for p, g in zip(params, grads):
        p.grad = g
    del base
    step = contender.make(params)
    time_ms = _timer(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    first_ms = time_ms(step)  # includes any compilation: torch.compile's, Triton's JIT
    for _ in range(warmup - 1):
        step()
    times = sorted(time_ms(step) for _ in range(steps))
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    return times, first_ms / 1e3, peak, [p.detach() for p in params]


def _measurements(contenders, shapes, device, warmup, steps, dtype):
    """``(contender, measure's result or the exception it raised)`` for each contender.

    On a GPU one contender after the other (only one set of states fits in memory for the big
    cases). On a CPU the timed steps are interleaved, one step of each contender in turn (in an
    order rotated every round), so that a load that comes and goes (other processes on a shared
    machine) falls on all of them alike.
    """
    if device.type != "cpu":
        for contender in contenders:
            try:
                yield contender, measure(contender, shapes, device, warmup, steps, dtype)
            except Exception as error:
                yield contender, error
        return
    runs = {}
    for contender in contenders:
        try:
            runs[contender.name] = _Run(contender, shapes, device, dtype)
            for _ in range(warmup - 1):
                runs[contender.name].step()
        except Exception as error:
            runs[contender.name] = error
    live = [run for run in runs.values() if not isinstance(run, Exception)]
    flush = torch.ones(_FLUSH_NUMEL)
    for round_ in range(steps):
        # The order rotates every round: each contender follows each other one equally often, so
        # none always inherits the cache (and dirty lines) of the same neighbour, e.g. the slow
        # reference's.
        shift = round_ % len(live) if live else 0
        for run in live[shift:] + live[:shift]:
            _evict_caches(flush)
            run.times.append(run.time_ms(run.step))
    for contender in contenders:
        run = runs[contender.name]
        if isinstance(run, Exception):
            yield contender, run
        else:
            yield contender, (sorted(run.times), run.first_ms / 1e3, float("nan"), [p.detach() for p in run.params])


# Read before each timed CPU step: 64 MiB, twice a server CPU's last-level cache here (32 MiB), so
# that every step starts as in training (the forward and backward passes in between stream far
# more than the cache through it) and no step inherits the previous contender's cached or dirty
# lines: without it, which contender ran just before moved a step's time by up to 20%.
_FLUSH_NUMEL = 1 << 24


def _evict_caches(flush: torch.Tensor) -> None:
    flush.sum()  # a read: it leaves clean lines, whose eviction costs the next step nothing


class _Run:
    """A CPU contender's params and step, after its first (timed) step."""

    def __init__(self, contender, shapes, device, dtype):
        base, grads = _params_and_grads(shapes, device, dtype=dtype)
        self.params = [p.clone().requires_grad_() for p in base]
        for p, g in zip(self.params, grads):
            p.grad = g
        self.step = contender.make(self.params)
        self.time_ms = _timer(device)
        self.first_ms = self.time_ms(self.step)
        self.times = []


def _check_parity(name, final, reference):
    """fp32: every contender computes the same update as the first one."""
    for a, b in zip(final, reference):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name} diverged: {m}")


def _fp32_reference(shapes, device, num_steps):
    """bf16 cases: where the weights should be, torch's fused AdamW run on fp32 copies of the
    same bf16 weights and grads, with the same clip and schedule (not timed)."""
    base, grads = _params_and_grads(shapes, device, dtype=torch.bfloat16)
    params = [p.float().requires_grad_() for p in base]
    for p, g in zip(params, grads):
        p.grad = g.float()
    step = _torch_adamw("fused").make(params)
    for _ in range(num_steps):
        step()
    return [b.float() for b in base], [p.detach() for p in params]


def _drift(final, start, reference) -> float:
    """How far a bf16 run's weights are from the fp32 reference, along the reference's own update,
    in units of that update: 0 for an unbiased step, -1 for a step that does nothing. Rounding
    noise averages out over millions of weights; a lost or wrong update does not."""
    along, size = 0.0, 0.0
    for p, p0, r in zip(final, start, reference):
        delta = r - p0
        along += float(((p.float() - r) * delta.sign()).sum())
        size += float(delta.abs().sum())
    return along / size


def _quantile(sorted_values, q):
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


# ----- records --------------------------------------------------------------------------------------


def _environment(device):
    def commit():
        if os.environ.get("FUSEDLR_BENCH_COMMIT"):  # a copy of the tree without .git (device runs)
            return os.environ["FUSEDLR_BENCH_COMMIT"]
        try:
            out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                 cwd=Path(__file__).parent, check=True)  # fmt: skip
            return out.stdout.strip()
        except Exception:
            return "unknown"

    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = "none"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return dict(
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        commit=commit(),
        device=name,
        torch=torch.__version__,
        triton=triton_version,
        cuda=torch.version.cuda or "none",
    )


def run(args) -> list[dict]:
    if not args.threads:
        return _run(args)
    previous = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(previous)


def _run(args) -> list[dict]:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cases = args.case or DEFAULT_CASES["cuda" if device.type == "cuda" else "cpu"]
    steps, warmup = (10, 3) if args.quick else (args.steps, max(1, args.warmup))
    env = _environment(device)
    if args.threads and device.type == "cpu":
        env["device"] = env["device"][:-1] + f", {args.threads} thread{'s' if args.threads > 1 else ''})"
    copy_gbps = copy_bandwidth_gbps(device)
    label = "" if device.type == "cuda" else "  [CPU figures: nothing about GPU speed]"
    print(f"device: {env['device']}  torch {env['torch']}  triton {env['triton']}  cuda {env['cuda']}{label}")
    print(f"device copy bandwidth: {copy_gbps:.1f} GB/s (read + write)\n")
    rows = []
    optimizers = list(OPTIMIZERS) if args.optimizer == "all" else [args.optimizer]
    dtypes = args.dtype or (["float32", "bfloat16"] if device.type == "cuda" else ["float32"])
    # bfloat16 rows: AdamW on the LLM layouts (the fp32 reference they are checked against is AdamW's).
    runs = [(o, d, c) for o in optimizers for d in dtypes for c in cases
            if d == "float32" or (o == "adamw" and c in BF16_CASES)]  # fmt: skip
    for optimizer, dtype_name, case in runs:
        dtype = getattr(torch, dtype_name)
        shapes = CASES[case]()
        numel = sum(torch.Size(s).numel() for s in shapes)
        print(
            f"{case}: {len(shapes)} tensors, {numel / 1e6:.1f}M {dtype_name} params, {optimizer}, clip {MAX_GRAD_NORM}"
        )
        print(f"  {'contender':<34}{'ms p50':>9}{'p20':>9}{'p80':>9}{'GB/s':>9}{'of copy':>9}{'peak MB':>10}"
              f"{'1st step s':>11}")  # fmt: skip
        reference = None
        if dtype != torch.float32:
            start, reference32 = _fp32_reference(shapes, device, warmup + steps)
        case_rows = []
        for contender, result in _measurements(contenders(optimizer, device, args.baseline, dtype), shapes, device,
                                               warmup, steps, dtype):  # fmt: skip
            if isinstance(result, Exception):  # a baseline that cannot run here: say so, keep going
                if contender.name.startswith("fusedlr"):
                    raise result
                print(f"  {contender.name:<34}failed: {type(result).__name__}: {str(result)[:100]}")
                continue
            times, first_s, peak, final = result
            drift = None
            if dtype != torch.float32:
                drift = _drift(final, start, reference32)
                if contender.name.startswith("fusedlr") and abs(drift) > 0.1:
                    raise AssertionError(f"{contender.name}: bf16 weights drifted {drift:+.3f} updates from fp32")
            elif reference is None:
                reference = final
            elif not contender.rewrites_grads:
                _check_parity(contender.name, final, reference)
            p50 = _quantile(times, 0.5)
            nbytes = (
                contender.bytes_per_param
                or (BF16_BYTES_PER_PARAM if dtype != torch.float32 else BYTES_PER_PARAM)[optimizer]
            )
            gbps = nbytes * numel / (p50 * 1e6)
            row = dict(env, case=case, optimizer=optimizer, contender=contender.name, dtype=dtype_name,
                       numel=numel, tensors=len(shapes), ms_p20=_quantile(times, 0.2), ms_p50=p50,
                       ms_p80=_quantile(times, 0.8), gbps=gbps, copy_gbps=copy_gbps,
                       fraction_of_copy=gbps / copy_gbps, peak_mem_mb=peak, first_step_s=first_s)  # fmt: skip
            case_rows.append(row)
            peak_text = "-" if peak != peak else f"{peak:.0f}"  # NaN: no peak-memory counter on CPU
            drift_text = "" if drift is None else f"   drift {drift:+.3f}"
            print(f"  {contender.name:<34}{p50:9.3f}{row['ms_p20']:9.3f}{row['ms_p80']:9.3f}"
                  f"{gbps:9.1f}{row['fraction_of_copy']:9.2f}{peak_text:>10}{first_s:11.2f}{drift_text}")  # fmt: skip
            del final
        ours = [r for r in case_rows if r["contender"].startswith("fusedlr")]
        if dtype == torch.float32:  # the best backend; in bf16 each variant is its own choice
            ours = [min(ours, key=lambda r: r["ms_p50"])]
        for mine in ours:
            for r in case_rows:
                if not r["contender"].startswith("fusedlr"):
                    print(f"  {mine['contender']} is {r['ms_p50'] / mine['ms_p50']:.2f}x {r['contender']}")
        print()
        rows += case_rows
        if not args.no_record:  # case by case: a run cut short keeps what it measured
            _append_rows(case_rows, Path(args.csv))
    if not args.no_record:
        print(f"appended {len(rows)} rows to {args.csv}")
        if device.type == "cuda":
            _publish(Path(args.csv))
        elif not args.threads:
            _publish_cpu(Path(args.csv))
    return rows


def _publish_cpu(csv_path: Path):
    """Regenerate the README's CPU table from the latest all-core CPU run in the CSV."""
    from . import bench_report

    run = bench_report.latest_run(bench_report.read_rows(csv_path), cpu=True)
    readme = csv_path.parent.parent.parent / "README.md"
    if run and readme.exists():
        bench_report.update_readme(readme, bench_report.markdown_table(run), None, cpu=True)
        print(f"updated the CPU benchmark table in {readme}")


def _publish(csv_path: Path):
    """Redraw the plot and the README table from the latest GPU run in the CSV."""
    from . import bench_report

    run = bench_report.latest_run(bench_report.read_rows(csv_path))
    png = csv_path.parent / "latest_gpu.png"
    try:
        bench_report.plot(run, png)
        print(f"wrote {png}")
    except ImportError:
        png = None
        print("no plot: matplotlib is missing (pip install 'fusedlr[bench]')")
    readme = csv_path.parent.parent.parent / "README.md"
    if readme.exists():
        relative = png.relative_to(readme.parent).as_posix() if png is not None else None
        bench_report.update_readme(readme, bench_report.markdown_table(run), relative)
        print(f"updated the benchmark table in {readme}")


def _append_rows(rows, path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        if new:
            writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fusedlr.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--optimizer", choices=[*OPTIMIZERS, "all"], default="all")
    parser.add_argument("--case", action="append", choices=sorted(CASES), help="repeatable; default by device")
    parser.add_argument(
        "--baseline",
        action="append",
        help="repeatable; default: every baseline that fits the device "
        "(adamw: foreach, fused, compile; lion: lion-pytorch, lion-pytorch-triton; sgd: foreach, fused; "
        "schedulefree: schedulefree; bfloat16 rows of adamw: fused, flashoptim, bitsandbytes-8bit, torchao-8bit)",
    )
    parser.add_argument("--dtype", action="append", choices=["float32", "bfloat16"],
                        help="repeatable; default float32 and bfloat16 on a GPU, float32 on a CPU (bfloat16 rows: "
                        "AdamW on gpt2 and llama_1b)")  # fmt: skip
    parser.add_argument("--steps", type=int, default=50, help="timed steps per contender (median reported)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (the first is timed apart)")
    parser.add_argument("--quick", action="store_true", help="10 timed steps after 3 warm-up steps")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--threads", type=int, help="CPU: torch.set_num_threads(N) for the run (default: all cores, "
                        "torch's default); the rows' device names the thread count")  # fmt: skip
    parser.add_argument("--csv", default=str(RESULTS_CSV))
    parser.add_argument("--no-record", action="store_true", help="print only; append no rows")
    parser.add_argument("--publish", action="store_true", help="only redraw the plot and README table from the CSV")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.publish:
        _publish(Path(args.csv))
        _publish_cpu(Path(args.csv))
    else:
        run(args)


if __name__ == "__main__":
    main()
