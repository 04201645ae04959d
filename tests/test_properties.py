"""Property-based parity (issue 11): random shapes, layouts, dtypes, param groups,
hyperparameters, schedules and missing grads, every backend against the independent
references: torch.optim.AdamW(foreach=False) or lion-pytorch's Lion, with the seed guide's AGC,
clip_grad_norm_ and LambdaLR, as a careful user writes the loop by hand (oracles.run_by_hand).

Derandomized (the same examples on every run, as CI needs). Longer runs:
``FUSEDLR_HYPOTHESIS_EXAMPLES=500 TRITON_INTERPRET=1 python -m pytest tests/test_properties.py``.
"""

import math
import os

import pytest
import torch
from helpers import FP32_TOL, assert_states_close, run_steps
from oracles import hf_constant_with_warmup, hf_cosine, hf_linear, run_by_hand

import fusedlr
from fusedlr import schedules as S

hypothesis = pytest.importorskip("hypothesis")
lion_pytorch = pytest.importorskip("lion_pytorch")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

EXAMPLES = int(os.environ.get("FUSEDLR_HYPOTHESIS_EXAMPLES", "20"))
SETTINGS = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))  # fmt: skip

# (fusedlr schedule, the reference's LambdaLR lambda), built from drawn sizes.
SCHEDULES = {
    "none": lambda w, t: (None, None),
    "warmup_cosine": lambda w, t: (S.WarmupCosine(w, t), hf_cosine(w, t)),
    "warmup_linear": lambda w, t: (S.WarmupLinear(w, t), hf_linear(w, t)),
    "warmup_constant": lambda w, t: (S.WarmupConstant(w), hf_constant_with_warmup(w)),
    "exponential": lambda w, t: (S.Exponential(0.9), lambda k: 0.9**k),
    "step": lambda w, t: (S.Step(2, 0.5), lambda k: 0.5 ** (k // 2)),
    "sequential": lambda w, t: (
        S.Sequential([S.WarmupLinear(w, t), S.WarmupCosine(1, 4)], [2]),
        lambda k: hf_linear(w, t)(k) if k < 2 else hf_cosine(1, 4)(k - 2),
    ),
}

shapes = st.one_of(
    st.lists(st.integers(0, 6), min_size=0, max_size=3).map(tuple),
    st.sampled_from([(1100,), (33, 40)]),  # more than one 1,024-element chunk (tests' chunk size)
)


@st.composite
def problems(draw, kind):
    """A parameter set, its groups and options, and the grads of a few steps."""
    n = draw(st.integers(1, 4), label="tensors")
    tensors = []
    for _ in range(n):
        shape = draw(shapes, label="shape")
        dtype = draw(st.sampled_from([torch.float32, torch.float64]), label="dtype")
        # Dense layouts the kernels take: contiguous, or a permutation of a contiguous tensor.
        order = draw(st.permutations(range(len(shape))), label="layout") if len(shape) > 1 else list(range(len(shape)))
        tensors.append((shape, dtype, tuple(order)))
    num_groups = draw(st.integers(1, min(3, n)), label="groups")
    owner = [i % num_groups for i in range(n)]  # every group gets a tensor
    owner = draw(st.permutations(owner), label="owners")
    groups = []
    for g in range(num_groups):
        group = dict(
            params=[i for i in range(n) if owner[i] == g],
            lr=draw(st.floats(1e-4, 0.1), label="lr"),
            weight_decay=draw(st.sampled_from([0.0, 0.01, 0.1]), label="weight_decay"),
            betas=(draw(st.floats(0.0, 0.99), label="beta1"), draw(st.floats(0.5, 0.999), label="beta2")),
            maximize=draw(st.booleans(), label="maximize"),
        )
        if kind == "adamw":
            group["eps"] = draw(st.sampled_from([1e-8, 1e-6, 1e-3]), label="eps")
            group["amsgrad"] = draw(st.booleans(), label="amsgrad")
        if draw(st.booleans(), label="agc?"):
            group["agc_clip_factor"] = draw(st.floats(0.01, 1.0), label="agc_clip_factor")
        groups.append(group)
    max_grad_norm = draw(st.one_of(st.none(), st.floats(0.1, 10.0)), label="max_grad_norm")
    warmup = draw(st.integers(0, 3), label="warmup")
    schedule_name = draw(st.sampled_from(sorted(SCHEDULES)), label="schedule")
    schedule, lr_lambda = SCHEDULES[schedule_name](warmup, warmup + draw(st.integers(1, 6), label="decay"))
    steps = draw(st.integers(1, 4), label="steps")
    # Missing grads: a (step, tensor) pair may have none, but every step updates some tensor
    # (a step with no grads at all is a no-op here, while LambdaLR would still advance).
    missing = []
    for _ in range(steps):
        row = [draw(st.booleans(), label="grad missing") and draw(st.booleans()) for _ in range(n)]
        if all(row):
            row[draw(st.integers(0, n - 1), label="kept")] = False
        missing.append(row)
    seed = draw(st.integers(0, 2**16), label="seed")
    return dict(tensors=tensors, groups=groups, max_grad_norm=max_grad_norm, schedule=schedule,
                lr_lambda=lr_lambda, missing=missing, seed=seed)  # fmt: skip


def materialize(problem):
    """Params (twice: ours and the reference's) and the grads of each step, laid out alike."""
    gen = torch.Generator().manual_seed(problem["seed"])

    def laid_out(shape, dtype, order, scale=1.0):
        inverse = sorted(range(len(order)), key=order.__getitem__)
        stored = torch.randn([shape[i] for i in order], generator=gen, dtype=dtype) * scale
        return stored.permute(inverse) if shape else stored.reshape(())

    base = [laid_out(*spec) for spec in problem["tensors"]]
    grads = []
    for row in problem["missing"]:
        scale = math.exp(float(torch.empty(()).uniform_(-2.0, 2.0, generator=gen)))  # small and large grads
        grads.append([None if gone else laid_out(*spec, scale=scale) for spec, gone in zip(problem["tensors"], row)])
    ours = [t.clone(memory_format=torch.preserve_format).requires_grad_() for t in base]
    theirs = [t.clone(memory_format=torch.preserve_format).requires_grad_() for t in base]
    return ours, theirs, grads


def tolerance(params):
    return FP32_TOL if any(p.dtype == torch.float32 for p in params) else dict(rtol=1e-10, atol=1e-12)


def _ours(cls, params, problem, backend):
    groups = [dict(g, params=[params[i] for i in g["params"]]) for g in problem["groups"]]
    return cls(groups, schedule=problem["schedule"], max_grad_norm=problem["max_grad_norm"], backend=backend)


def _check_norms(norms, ref_norms, problem, params):
    if problem["max_grad_norm"] is None:
        return
    torch.testing.assert_close(
        torch.stack([n.double() for n in norms]), torch.stack([n.double() for n in ref_norms]), rtol=1e-5, atol=1e-12
    )


def test_adamw_matches_torch_on_random_problems(backend):
    @SETTINGS
    @given(problem=problems("adamw"))
    def check(problem):
        ours, theirs, grads = materialize(problem)
        opt = _ours(fusedlr.AdamW, ours, problem, backend)
        norms = run_steps(opt, ours, grads)
        ref, ref_norms = run_by_hand(
            lambda groups: torch.optim.AdamW(groups, foreach=False), theirs, problem["groups"], grads,
            lr_lambda=problem["lr_lambda"], max_grad_norm=problem["max_grad_norm"],
        )  # fmt: skip
        assert_states_close(opt, ours, ref, theirs, **tolerance(ours))
        _check_norms(norms, ref_norms, problem, ours)

    check()


def test_lion_matches_lion_pytorch_on_random_problems(backend):
    @SETTINGS
    @given(problem=problems("lion"))
    def check(problem):
        ours, theirs, grads = materialize(problem)
        opt = _ours(fusedlr.Lion, ours, problem, backend)
        norms = run_steps(opt, ours, grads)
        # lion-pytorch has no maximize: its grads are negated instead (norms are unchanged).
        maximized = {i for g in problem["groups"] if g["maximize"] for i in g["params"]}
        ref_grads = [[None if g is None else (-g if i in maximized else g) for i, g in enumerate(row)] for row in grads]
        ref_groups = [{k: v for k, v in g.items() if k != "maximize"} for g in problem["groups"]]
        ref, ref_norms = run_by_hand(
            lambda groups: lion_pytorch.Lion(groups), theirs, ref_groups, ref_grads,
            lr_lambda=problem["lr_lambda"], max_grad_norm=problem["max_grad_norm"],
        )  # fmt: skip
        assert_states_close(opt, ours, ref, theirs, **tolerance(ours))
        _check_norms(norms, ref_norms, problem, ours)

    check()
