"""fusedlr.Lion against lion-pytorch's Lion + clip_grad_norm_ + LambdaLR."""

import pytest
import torch
from helpers import assert_states_close, clone_params, make_grads, make_params, run_steps
from lion_pytorch import Lion as ReferenceLion
from oracles import hf_cosine, hf_linear, run_by_hand

import fusedlr
from fusedlr import schedules

STEPS = 22


@pytest.mark.parametrize(
    "schedule, lr_lambda, max_norm",
    [
        (None, None, None),
        (schedules.WarmupCosine(4, 20), hf_cosine(4, 20), 1.0),
        (schedules.WarmupLinear(2, 12), hf_linear(2, 12), 1e4),
    ],
    ids=["plain", "cosine+clip", "linear+clip_inactive"],
)
def test_lion_matches_lion_pytorch(backend, schedule, lr_lambda, max_norm):
    base = make_params()
    grads = make_grads(base, STEPS, skip=lambda step, i: i == 4 and step % 4 == 0)
    spec = [
        dict(params=[0, 1, 2, 3], lr=1e-3, weight_decay=0.1, betas=(0.9, 0.99)),
        dict(params=[4, 5, 6, 7, 8, 9], lr=3e-4, weight_decay=0.0, betas=(0.95, 0.98)),
    ]
    ours = clone_params(base)
    opt = fusedlr.Lion(
        [dict(g, params=[ours[i] for i in g["params"]]) for g in spec],
        schedule=schedule,
        max_grad_norm=max_norm,
        backend=backend,
    )
    norms = run_steps(opt, ours, grads)
    theirs = clone_params(base)
    ref, ref_norms = run_by_hand(lambda groups: ReferenceLion(groups), theirs, spec, grads, lr_lambda=lr_lambda,
                                 max_grad_norm=max_norm)  # fmt: skip
    assert_states_close(opt, ours, ref, theirs)
    if max_norm is not None:
        torch.testing.assert_close(torch.stack(norms), torch.stack(ref_norms), rtol=1e-5, atol=0)


def test_lion_agc_and_maximize(backend):
    """maximize=True is Lion on -grad; lion-pytorch has no flag, so its grads are negated."""
    base = make_params()
    grads = make_grads(base, STEPS, scale=3.0)
    spec = [dict(params=list(range(len(base))), lr=1e-3, weight_decay=0.05, agc_clip_factor=0.05)]
    ours = clone_params(base)
    opt = fusedlr.Lion(ours, lr=1e-3, weight_decay=0.05, agc_clip_factor=0.05, maximize=True, max_grad_norm=2.0,
                       backend=backend)  # fmt: skip
    run_steps(opt, ours, grads)
    theirs = clone_params(base)
    negated = [[None if g is None else -g for g in step] for step in grads]
    ref, _ = run_by_hand(lambda groups: ReferenceLion(groups), theirs, spec, negated, max_grad_norm=2.0)
    assert_states_close(opt, ours, ref, theirs)


def test_lion_defaults_are_lion_pytorchs():
    p = torch.nn.Parameter(torch.zeros(2))
    ours, theirs = fusedlr.Lion([p]), ReferenceLion([p])
    for key in ("lr", "betas", "weight_decay"):
        assert ours.defaults[key] == theirs.defaults[key]
