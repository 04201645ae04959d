"""8-bit optimizer moments (``state_dtype="int8"``): the readable reference of the quantisation
the kernels (Triton's update, the CUDA extension's quantized_update) apply in registers, and the
state conversions around it.

Each moment tensor is cut, in memory order, into blocks of ``QUANT_BLOCK`` elements (a block
never straddles two tensors, or two local shards); each block keeps one float32 scale and one
8-bit code per element:

* ``exp_avg`` (signed, LION's and AdamW's first moment): ``s = max |m|`` over the block,
  ``y = 2x / (1 + |x|)`` of ``x = m / s`` (a companding that spends more codes near zero), code
  ``sign(y) * floor(127 |y| + 0.5)`` in int8 ``[-127, 127]``, or ``sign(y) * floor(127 |y| + 2^-12)``
  (toward zero) for AdamW where the element's gradient is zero; decoded ``y = code / 127``,
  ``m = s * y / (2 - |y|)``;
* ``exp_avg_sq`` (non-negative): ``r = sqrt(v)``, ``s = max r`` over the block, code
  ``floor(255 r / s + 0.5)`` in uint8, and at least 1 where ``v > 0``; decoded
  ``v = (s * code / 255) ** 2``.

Why a decaying first moment is rounded toward zero and the second moment never to zero: a
moment whose gradients have stopped decays by ``beta`` a step, and rounding to nearest maps a
small code back to itself (``floor(0.9 c + 0.5) == c`` for ``c <= 5``), so ``m`` would never
reach zero and the weight would keep moving forever; rounded toward zero while its gradient is
zero, every code decays to 0, as fp32 ``m`` does. Every other step keeps the nearest code: a
rule such as "toward zero wherever ``|m|`` shrank" also hits the half of noisy steps that shrink
``m`` and biases it low (measured: stored against fp32 ``m``, a slope of 0.88 for an element
under a tenth of its block's maximum), while with a nonzero gradient the nearest code is at most
half a code off, as for any rounding. (The 2^-12 only keeps a code from losing a unit to float
error.) AdamW's only: LION's update is the sign of a mix of ``m`` and the gradient, which a tiny fp32 ``m`` moves by
lr as well, so there the nearest code is the faithful one.
A second moment rounded to code 0 beside a nonzero ``m`` would make the update ``m / eps``: a
jump of thousands of lr; a floor of code 1 keeps ``v`` at or above the truth there (a smaller,
safe update), and ``v`` sticking at its code only errs the same safe way.

This is FlashOptim's companding (arXiv 2602.23349) with float32 scales on blocks of 256;
``benchmarks/quantization_error.py`` measures it against bitsandbytes' dynamic map on moments
of a trained model (README, "8-bit moments"). Every operation is an IEEE multiplication,
division, square root or floor, so the kernels reproduce it bit for bit. Blocks with scale 0
(all zeros) keep code 0.

Tensors of fewer than ``MIN_QUANTIZED_NUMEL`` elements keep float32 moments (as bitsandbytes):
their bytes do not matter and biases and norms are the most sensitive to noise.
"""

from __future__ import annotations

import torch

INT8 = "int8"  # the state_dtype value that asks for 8-bit moments
QUANT_BLOCK = 256  # elements per scale: a power of two that divides every chunk of the kernels
MIN_QUANTIZED_NUMEL = 4096
# Per quantised moment: (codes key, scales key, signed).
QUANTIZED_KEYS = {
    "exp_avg": ("exp_avg_codes", "exp_avg_scales", True),
    "exp_avg_sq": ("exp_avg_sq_codes", "exp_avg_sq_scales", False),
}
CODE_KEYS = {codes: (moment, scales, signed) for moment, (codes, scales, signed) in QUANTIZED_KEYS.items()}
SCALE_KEYS = {scales: (moment, codes) for moment, (codes, scales, _) in QUANTIZED_KEYS.items()}
SIGNED_LEVELS = 127.0
UNSIGNED_LEVELS = 255.0
SIGNED_SLACK_LOG2 = 12  # exp_avg's codes: floor(127 |y| + 2**-12), toward zero (see above)
SIGNED_SLACK = 2.0**-SIGNED_SLACK_LOG2


def wants_int8(group: dict) -> bool:
    return group.get("state_dtype") == INT8


def quantizes(param: torch.Tensor, group: dict) -> bool:
    """Whether ``param``'s moments are stored in 8 bits (large enough, not float64)."""
    return wants_int8(group) and param.dtype != torch.float64 and param.numel() >= MIN_QUANTIZED_NUMEL


def num_blocks(numel: int) -> int:
    return -(-numel // QUANT_BLOCK)


def check_group(group: dict) -> None:
    """ValueErrors, as the constructor raises them, for options 8-bit moments cannot serve."""
    if wants_int8(group) and group.get("amsgrad"):
        raise ValueError("amsgrad is not supported with state_dtype='int8' (its running maximum would be 8-bit too)")


def check_step(groups, sharded: bool) -> None:
    """RuntimeErrors, before anything is modified, where 8-bit moments cannot run."""
    if not any(map(wants_int8, groups)):
        return
    if sharded:
        raise RuntimeError(
            "fusedlr: state_dtype='int8' does not support DTensor (FSDP2) parameters yet: block scales of local "
            "shards would not reshard with the checkpoint. Use state_dtype=torch.bfloat16 for sharded params."
        )


# ----- the quantisation (the kernels' twins: fusedlr/_triton/kernels.py, csrc/kernels.cu) ----


def _blocks(flat: torch.Tensor) -> torch.Tensor:
    """``flat`` (memory order) zero-padded to whole blocks, as ``[num_blocks, QUANT_BLOCK]``."""
    padded = torch.zeros(num_blocks(flat.numel()) * QUANT_BLOCK, dtype=torch.float32, device=flat.device)
    padded[: flat.numel()] = flat
    return padded.view(-1, QUANT_BLOCK)


def _safe(scale: torch.Tensor) -> torch.Tensor:
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def quantize_signed(flat: torch.Tensor, decaying: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 values in memory order -> (int8 codes, float32 block scales); rounded to nearest,
    or toward zero where ``decaying`` (bool, the same order) is true."""
    blocks = _blocks(flat)
    scale = blocks.abs().amax(dim=1)
    x = blocks / _safe(scale)[:, None]
    y = (x * 2.0) / (x.abs() + 1.0)
    offset = 0.5 if decaying is None else torch.where(_blocks(decaying) > 0, SIGNED_SLACK, 0.5)
    codes = torch.copysign(torch.floor(y.abs() * SIGNED_LEVELS + offset), y)
    return codes.flatten()[: flat.numel()].to(torch.int8), scale


def dequantize_signed(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    y = codes.to(torch.float32) * (1.0 / SIGNED_LEVELS)
    x = y / (2.0 - y.abs())
    index = torch.arange(codes.numel(), device=codes.device) // QUANT_BLOCK
    return x * scale[index]


def quantize_unsigned(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-negative float32 values in memory order -> (uint8 codes of sqrt, block max of sqrt)."""
    # The root in float64, rounded once: the correctly rounded float32 root, as the kernels'
    # sqrt_rn (torch's float32 CPU sqrt is not always correctly rounded).
    blocks = torch.sqrt(_blocks(flat).double()).float()
    scale = blocks.amax(dim=1)
    codes = torch.floor(blocks / _safe(scale)[:, None] * UNSIGNED_LEVELS + 0.5)
    codes = torch.where((codes == 0) & (blocks > 0), 1.0, codes)  # never 0 for v > 0
    return codes.flatten()[: flat.numel()].to(torch.uint8), scale


def dequantize_unsigned(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    index = torch.arange(codes.numel(), device=codes.device) // QUANT_BLOCK
    r = scale[index] * (codes.to(torch.float32) * (1.0 / UNSIGNED_LEVELS))
    return r * r


# ----- moments in and out of states --------------------------------------------------------


def _memory_flat(tensor: torch.Tensor) -> torch.Tensor:
    """A dense tensor's elements in memory order, as a 1-D view."""
    return tensor.as_strided((tensor.numel(),), (1,))


# Elements per slice of a conversion (whole blocks): its temporaries take a few MiB, not
# several times the tensor (a checkpoint converted on load, a state made at the first step).
CONVERT_SLICE = 1 << 20


def flat_slices(numel: int, size: int) -> list[slice]:
    """Consecutive slices of at most ``size`` elements covering ``numel`` (``size`` a multiple of
    QUANT_BLOCK, so that each slice holds whole 8-bit blocks)."""
    return [slice(start, min(start + size, numel)) for start in range(0, numel, size)]


def scales_of(part: slice) -> slice:
    """The block scales of the elements in ``part`` (a slice of whole blocks, the last partial)."""
    return slice(part.start // QUANT_BLOCK, -(-part.stop // QUANT_BLOCK))


def _in_memory_order_of(values: torch.Tensor, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if values.dtype == dtype and values.stride() == like.stride():
        return values  # already in like's memory order
    return torch.empty_like(like, dtype=dtype).copy_(values)


def encode(values: torch.Tensor, like: torch.Tensor, signed: bool, decaying: torch.Tensor | None = None):
    """(codes laid out as ``like`` (dense), block scales) of ``values`` (any layout); a signed
    moment is rounded toward zero where ``decaying`` (values' shape) is true."""
    flat = _memory_flat(_in_memory_order_of(values, like, torch.float32))
    decaying_flat = None if decaying is None else _memory_flat(_in_memory_order_of(decaying, like, torch.bool))
    out = torch.empty_like(like, dtype=torch.int8 if signed else torch.uint8)
    scale = torch.empty(num_blocks(like.numel()), dtype=torch.float32, device=like.device)
    out_flat = _memory_flat(out)
    for part in flat_slices(like.numel(), CONVERT_SLICE):
        if signed:
            toward_zero = None if decaying is None else decaying_flat[part]
            codes, scale[scales_of(part)] = quantize_signed(flat[part], toward_zero)
        else:
            codes, scale[scales_of(part)] = quantize_unsigned(flat[part])
        out_flat[part] = codes
    return out, scale


def decode(codes: torch.Tensor, scale: torch.Tensor, signed: bool) -> torch.Tensor:
    """float32 moment laid out as ``codes``."""
    out = torch.empty_like(codes, dtype=torch.float32)
    flat, out_flat = _memory_flat(codes), _memory_flat(out)
    for part in flat_slices(codes.numel(), CONVERT_SLICE):
        out_flat[part] = (dequantize_signed if signed else dequantize_unsigned)(flat[part], scale[scales_of(part)])
    return out


def zero_moment(moment: str, param: torch.Tensor) -> dict:
    """The codes and scales of an all-zero moment of ``param`` (what encoding zeros gives:
    code 0, scale 0), made without a float32 tensor in between."""
    codes, scales, signed = QUANTIZED_KEYS[moment]
    return {
        codes: _code_layout(param, torch.int8 if signed else torch.uint8).zero_(),
        scales: torch.zeros(num_blocks(param.numel()), dtype=torch.float32, device=param.device),
    }


def _code_layout(param: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An empty code tensor laid out as ``param`` where that layout is dense, else contiguous."""
    like = torch.empty_like(param, dtype=dtype, memory_format=torch.preserve_format)
    return like if _is_dense(like) else torch.empty(param.shape, dtype=dtype, device=param.device)


def is_quantized(state: dict) -> bool:
    return any(codes in state for codes in CODE_KEYS)


def decoded_moments(state: dict) -> dict:
    """``{moment name: float32 tensor}`` of the quantised moments in ``state``."""
    return {
        moment: decode(state[codes], state[scales], signed)
        for moment, (codes, scales, signed) in QUANTIZED_KEYS.items()
        if codes in state
    }


def store_moments_(state: dict, moments: dict, decaying: torch.Tensor | None) -> None:
    """Quantise float32 ``moments`` back into ``state``'s codes and scales, in place; the first
    moment toward zero where ``decaying`` (the param's shape: AdamW's zero gradients), or
    everywhere to nearest (None: LION)."""
    for moment, value in moments.items():
        codes, scales, signed = QUANTIZED_KEYS[moment]
        new_codes, new_scales = encode(value, state[codes], signed, decaying if signed else None)
        state[codes].copy_(new_codes)
        state[scales].copy_(new_scales)


def _check_one_form(state: dict) -> None:
    for moment, (codes, _, _) in QUANTIZED_KEYS.items():
        if moment in state and codes in state:
            raise RuntimeError(
                f"fusedlr: state holds both {moment!r} and its 8-bit form {codes!r}; a moment is stored one way"
            )


def convert_state_(state: dict, param: torch.Tensor, group: dict, float_dtype: torch.dtype) -> None:
    """Bring ``state`` to the form the group asks for: float moments quantised when ``param``
    takes 8-bit moments, codes decoded to ``float_dtype`` when it does not (the options changed,
    or a checkpoint of the other form was loaded). The conversion error is one quantisation."""
    _check_one_form(state)
    if quantizes(param, group):
        for moment, (codes, scales, signed) in QUANTIZED_KEYS.items():
            if moment in state:
                like = _code_layout(param, torch.int8)
                state[codes], state[scales] = encode(state.pop(moment), like, signed)
    else:
        for moment, (codes, scales, signed) in QUANTIZED_KEYS.items():
            if codes in state:
                value = decode(state.pop(codes), state.pop(scales), signed)
                state[moment] = torch.empty_like(param, dtype=float_dtype).copy_(value)


def _is_dense(tensor: torch.Tensor) -> bool:
    from ._fused import _dense_strides

    return tensor.numel() == 0 or _dense_strides(tensor) is not None


def check_quantized_states(param: torch.Tensor, state: dict) -> None:
    """RuntimeErrors for codes and scales that cannot belong to ``param`` (a step's checks)."""
    _check_one_form(state)
    for codes, scales, signed in QUANTIZED_KEYS.values():
        if (codes in state) != (scales in state):
            raise RuntimeError(f"fusedlr: state has {codes!r} or {scales!r} without the other")
        if codes not in state:
            continue
        code_dtype = torch.int8 if signed else torch.uint8
        value, scale = state[codes], state[scales]
        if value.dtype != code_dtype or value.shape != param.shape or not _is_dense(value):
            raise RuntimeError(
                f"fusedlr: state {codes!r} must be a dense {code_dtype} tensor of the parameter's shape "
                f"{tuple(param.shape)}; got {value.dtype} of shape {tuple(value.shape)}"
            )
        if scale.dtype != torch.float32 or scale.shape != (num_blocks(param.numel()),) or not scale.is_contiguous():
            raise RuntimeError(
                f"fusedlr: state {scales!r} must be contiguous float32 of shape ({num_blocks(param.numel())},) "
                f"(one scale per {QUANT_BLOCK} elements); got {scale.dtype} of shape {tuple(scale.shape)}"
            )
