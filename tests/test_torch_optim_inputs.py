"""torch's own AdamW test inputs (torch.testing._internal.common_optimizers, AdamW's
OptimizerInfo) on every backend, in fp32 and fp64, against torch.optim.AdamW (issue 11).

The configurations are the ones torch lists for CUDA (a superset of its CPU list): defaults,
lr, weight decay, maximize, amsgrad, and tensor lr and betas (one pair shaped [1, 1, 1] and
[1, 1]). Options that choose torch's implementation (capturable, foreach, fused,
differentiable) are torch's own business and are left out of fusedlr's arguments.
"""

import copy

import pytest
import torch
from helpers import FP32_TOL, assert_states_close, clone_params, make_grads, make_params, run_steps

import fusedlr

pytest.importorskip("expecttest")  # torch.testing._internal imports it
common_optimizers = pytest.importorskip("torch.testing._internal.common_optimizers")

IMPLEMENTATION_OPTIONS = ("capturable", "foreach", "fused", "differentiable")


def adamw_inputs():
    info = next(o for o in common_optimizers.optim_db if o.optim_cls is torch.optim.AdamW)
    cases = []
    for dtype in (torch.float32, torch.float64):
        for optim_input in info.optim_inputs_func(device="cuda", dtype=dtype):
            cases.append(pytest.param(dtype, optim_input.kwargs, id=f"{dtype}-{optim_input.desc}"))
    return cases


CASES = adamw_inputs()


def test_torch_lists_its_adamw_configurations():
    assert len(CASES) >= 18  # 10 configurations x 2 dtypes with torch 2.13; fewer means the list moved


@pytest.mark.parametrize("dtype, kwargs", CASES)
def test_torch_adamw_inputs_match_torch(backend, dtype, kwargs):
    ours_kwargs = {k: v for k, v in copy.deepcopy(kwargs).items() if k not in IMPLEMENTATION_OPTIONS}
    theirs_kwargs = {k: v for k, v in copy.deepcopy(kwargs).items() if k not in IMPLEMENTATION_OPTIONS}
    base = make_params(dtype=dtype)
    grads = make_grads(base, 5, skip=lambda step, i: i == 2 and step == 1)
    ours, theirs = clone_params(base), clone_params(base)
    opt = fusedlr.AdamW(ours, backend=backend, **ours_kwargs)
    ref = torch.optim.AdamW(theirs, foreach=False, **theirs_kwargs)
    run_steps(opt, ours, grads)
    run_steps(ref, theirs, grads)
    tol = FP32_TOL if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-14)
    if any(torch.is_tensor(v) for v in kwargs.values()) and dtype == torch.float64:
        # torch computes 1 - lr * wd in the tensor lr's float32 (ours: the lr's value in float64):
        # its decay factor is off by up to an fp32 ulp (6e-8), and so are its fp64 params.
        tol = dict(rtol=1e-7, atol=1e-9)
    assert_states_close(opt, ours, ref, theirs, **tol)
