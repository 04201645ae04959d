"""Parameters, gradients and comparisons shared by the tests."""

from __future__ import annotations

import torch

# Shapes the kernels find awkward: a scalar-like tensor, a length one past a power of two
# (and, with the suite's 1,024-element chunks, five chunks), 3-D, empty, a transposed
# (dense but non-contiguous) matrix, and a run of tiny tensors.
AWKWARD_SHAPES = [(1,), (4097,), (3, 5, 7), (0,), "transposed", (2, 3), (5,), (1, 1), (3,), (6, 2)]

FP32_TOL = dict(rtol=2e-5, atol=2e-6)


def make_params(shapes=AWKWARD_SHAPES, seed=0, dtype=torch.float32, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    params = []
    for shape in shapes:
        if shape == "transposed":
            t = torch.randn(5, 7, generator=gen, dtype=dtype).t()
        else:
            t = torch.randn(shape, generator=gen, dtype=dtype)
        params.append(t.to(device).requires_grad_())
    return params


def clone_params(params):
    return [p.detach().clone(memory_format=torch.preserve_format).requires_grad_() for p in params]


def make_grads(params, steps, seed=1, scale=1.0, skip=None):
    """``steps`` lists of grads laid out like their params; ``skip(step, index)`` -> None grad."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for step in range(steps):
        grads = []
        for i, p in enumerate(params):
            g = torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale * (1 + step % 3)
            g = torch.empty_like(p).copy_(g.to(p.device))
            grads.append(None if skip is not None and skip(step, i) else g)
        out.append(grads)
    return out


def run_steps(opt, params, grads_per_step):
    """Set each step's grads and step ``opt`` (fusedlr's or torch's); returns the reported norms."""
    norms = []
    for grads in grads_per_step:
        for p, g in zip(params, grads):
            p.grad = None if g is None else g.clone()
        opt.step()
        norms.append(getattr(opt, "last_grad_norm", None))  # torch optimizers have none
    return norms


def assert_states_close(opt_a, params_a, opt_b, params_b, **tol):
    tol = tol or FP32_TOL
    for i, (pa, pb) in enumerate(zip(params_a, params_b)):
        torch.testing.assert_close(pa, pb, **tol, msg=lambda m, i=i: f"param {i}: {m}")
        sa, sb = opt_a.state.get(pa, {}), opt_b.state.get(pb, {})
        assert set(sa) == set(sb), f"param {i}: state keys {sorted(sa)} vs {sorted(sb)}"
        for key in sa:
            if key == "step":
                assert float(sa[key]) == float(sb[key]), f"param {i}: step {sa[key]} vs {sb[key]}"
            else:
                torch.testing.assert_close(sa[key], sb[key], **tol, msg=lambda m, i=i, key=key: f"param {i} {key}: {m}")


def assert_same_storage(ours, theirs, atol=0.0):
    """Equal but for rare elements: the two backends sum the squares of the norm in different
    orders (fp64 partials against torch's fp32 reduction), so a clip scale may differ in its
    last place and flip the rounding of a value sitting on a boundary, by one unit in the last
    place. A moment one unit off moves the next update by at most 2**-7 of lr: ``atol``."""
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    if ours.dtype == torch.bfloat16:
        # One unit in the last place is at most 2**-7 of the larger value, 2**-6 of the smaller.
        torch.testing.assert_close(ours.float(), theirs.float(), rtol=2**-6, atol=atol)
        differ = (ours != theirs).float().mean().item()
        assert differ <= 1e-3, f"{differ:.2e} of {ours.numel()} elements differ (at most 1e-3 may)"
    else:
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=max(atol, 1e-7))


def capture_step(opt):
    """One eager warm-up step on a side stream (it builds the device tables), then
    ``opt.step()`` captured in a CUDA graph, the way torch's CUDA-graph docs do it."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        opt.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    return graph
