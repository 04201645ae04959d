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


def assert_same_storage(ours, theirs, atol=0.0, rare=True):
    """Equal but for rare elements: the two backends sum the squares of the norm in different
    orders (fp64 partials against torch's fp32 reduction), so a clip scale may differ in its
    last place and flip the rounding of a value sitting on a boundary, by one unit in the last
    place. A moment one unit off moves the next update by at most 2**-7 of lr: ``atol``.
    ``rare=False`` leaves out the count of differing elements (a caller that measures the whole
    model instead: one element of a small tensor is already a large fraction of it)."""
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    if ours.dtype == torch.bfloat16:
        # One unit in the last place is at most 2**-7 of the larger value, 2**-6 of the smaller.
        torch.testing.assert_close(ours.float(), theirs.float(), rtol=2**-6, atol=atol)
        if not rare:
            return
        differ = (ours != theirs).float().mean().item()
        assert differ <= 1e-3, f"{differ:.2e} of {ours.numel()} elements differ (at most 1e-3 may)"
    else:
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=max(atol, 1e-7))


def weights_of(param, state) -> torch.Tensor:
    """The float32 weight a param stands for: its master copy, its bf16 value and split-master
    residual, or itself."""
    from fusedlr import _split_master

    if _split_master.RESIDUAL_KEY in state:
        return _split_master.reconstruct(param.detach().cpu(), state[_split_master.RESIDUAL_KEY].cpu())
    if "master_param" in state:
        return state["master_param"].detach().cpu()
    return param.detach().cpu().float()


def distance_to_oracle(params, opt, oracle, start) -> float:
    """How far the weights of ``params`` (stepped by ``opt``) end from an fp32 oracle's weights
    (``oracle``, flat, on the CPU), as a fraction of how far the oracle moved from ``start``."""
    weights = torch.cat([weights_of(p, opt.state[p]).flatten() for p in params])
    return float((weights - oracle).norm() / (oracle - start).norm())


def assert_as_close_to_the_oracle(error, reference_error, what):
    """Two runs that differ only in the last bits of their arithmetic (contracted multiply-adds,
    the norm's summation order) end equally far from an fp32 oracle. Element by element they
    part: a rounding or an 8-bit code one unit apart stays apart for steps, and a code moved in
    a block's largest moment moves the block's scale and codes all over the block. Over a model
    of 150,000 weights that moves the distance by about 1e-6 (at most 3.5e-6 seen between the
    CPU interpreter and the torch backend); a wrong scale, a dropped residual or a moment decoded
    on the wrong block adds errors of the weights' own size."""
    assert abs(error - reference_error) <= 0.01 * reference_error + 1e-5, (
        f"{what}: {error:.6g} of the oracle's movement off it, the reference {reference_error:.6g}"
    )


def assert_runs_as_close_to_the_oracle(ours, opt, theirs, ref, oracle, start, what, min_numel=4096):
    """``ours`` (stepped by ``opt``) and ``theirs`` (by ``ref``) end equally far from the fp32
    ``oracle`` params, which moved from the ``start`` tensors, over the whole model and tensor by
    tensor for tensors of ``min_numel`` elements or more (a wrong tensor hides in the whole
    model's norm: a 4,096-element tensor is 4% of 155,000 weights' norm; per tensor, runs that
    part in last bits differ by under 1e-3 of the distance)."""
    oracle = torch.cat([p.detach().cpu().float().flatten() for p in oracle])
    start = torch.cat([p.detach().cpu().float().flatten() for p in start])
    assert_as_close_to_the_oracle(
        distance_to_oracle(ours, opt, oracle, start), distance_to_oracle(theirs, ref, oracle, start), what
    )
    offset = 0
    for index, (p, q) in enumerate(zip(ours, theirs)):
        span = slice(offset, offset + p.numel())
        offset += p.numel()
        if p.numel() >= min_numel:
            assert_as_close_to_the_oracle(
                distance_to_oracle([p], opt, oracle[span], start[span]),
                distance_to_oracle([q], ref, oracle[span], start[span]),
                f"{what}, tensor {index} {tuple(p.shape)}",
            )


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
