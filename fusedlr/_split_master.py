"""Split master weights (``master_weights="split"``): a bf16 param plus an int8 residual of its
rounding error stand for a float32 master weight, at 3 bytes per param instead of 6.

The float32 weight ``w`` is written as the param ``p = round_to_nearest_even(w)`` (bf16) and the
residual ``e``: the difference of their float32 bit patterns, ``d = bits(w) - bits(p) << 16``
(``|d| <= 2**15``, as ``p`` is ``w`` rounded to 16 bits; ``w`` and ``p`` share their sign),
rounded to units of 256 and clamped: ``e = clamp((d + 128) >> 8, -127, 127)`` (not -128: the
weight ``-128`` units would stand for is a tie that rounds to the other neighbour, so a step that
leaves the weight unchanged would move it).
The step reconstructs ``w' = float32 from bits(p) << 16 + 256 e``, updates it in float32 and
writes ``p`` and ``e`` again, in the same pass.

Reconstruction error: ``|bits(w) - bits(w')| <= 128`` (up to 256 where the residual is within
1/128 of half a bf16 step from ``p``, where the clamp bites), that is ``|w - w'| <= 2**-16 |w|``
(``2**-15 |w|`` there) for normal numbers: about 24 significant bits of the 32. Re-encoding a
reconstructed weight gives back the same param and residual.
Integer arithmetic only, so deterministic and the same bits in every backend.
"""

from __future__ import annotations

import torch

SPLIT = "split"  # the master_weights value that asks for split master weights
RESIDUAL_KEY = "master_residual"
MASK32 = 0xFFFFFFFF


def _bits(x: torch.Tensor) -> torch.Tensor:
    """float32 bit patterns as int64 holding uint32 values."""
    return x.float().view(torch.int32).to(torch.int64) & MASK32


def rounded_bits(w: torch.Tensor) -> torch.Tensor:
    """Bits (uint32 in int64) of ``w`` rounded to bfloat16 to nearest-even, in float32 layout."""
    bits = _bits(w)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 & 0xFFFF) << 16


def residual(w: torch.Tensor) -> torch.Tensor:
    """The int8 residual of ``w`` (float32) against its bf16 rounding."""
    d = _bits(w) - rounded_bits(w)
    return ((d + 128) >> 8).clamp(-127, 127).to(torch.int8)


def reconstruct(param: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """The float32 weight that a bf16 ``param`` and its int8 ``residual`` stand for."""
    bits = (param.view(torch.int16).to(torch.int64) & 0xFFFF) << 16
    bits = (bits + residual.to(torch.int64) * 256) & MASK32
    return (bits - ((bits >> 31) << 32)).to(torch.int32).view(torch.float32)


def store_(param: torch.Tensor, residual_out: torch.Tensor, w: torch.Tensor) -> None:
    """Write the float32 weight ``w`` as the bf16 ``param`` (to nearest-even) and its residual."""
    residual_out.copy_(residual(w))
    param.copy_(w)


def uses_split(param: torch.Tensor, group: dict) -> bool:
    return group.get("master_weights") == SPLIT and param.dtype == torch.bfloat16


def convert_state_(state: dict, param: torch.Tensor, group: dict, wants_fp32_master: bool) -> None:
    """Bring the master-weight state to what the options ask: a residual made from an fp32
    master copy when switching to split (or zeros: the param is the weight), an fp32 master
    reconstructed from the residual when switching back; the residual dropped otherwise."""
    if uses_split(param, group):
        if RESIDUAL_KEY not in state:
            master = state.pop("master_param", None)
            if master is None:
                state[RESIDUAL_KEY] = torch.zeros_like(param, dtype=torch.int8, memory_format=torch.preserve_format)
            else:
                state[RESIDUAL_KEY] = torch.empty_like(param, dtype=torch.int8).copy_(residual(master))
        state.pop("master_param", None)
    elif RESIDUAL_KEY in state:
        saved = state.pop(RESIDUAL_KEY)
        if wants_fp32_master and "master_param" not in state:
            master = torch.empty_like(param, dtype=torch.float32, memory_format=torch.preserve_format)
            state["master_param"] = master.copy_(reconstruct(param.detach(), saved))


def check_step(groups, sharded: bool) -> None:
    """RuntimeErrors, before anything is modified, where split master weights cannot run."""
    if not any(group.get("master_weights") == SPLIT for group in groups):
        return
    if sharded:
        raise RuntimeError(
            "fusedlr: master_weights='split' is not supported with DTensor (FSDP2) parameters yet; "
            "use master_weights=True there."
        )


def check_state(param: torch.Tensor, state: dict) -> None:
    """RuntimeError for a residual that cannot belong to ``param`` (a step's checks)."""
    value = state.get(RESIDUAL_KEY)
    if value is None:
        return
    if value.dtype != torch.int8 or value.shape != param.shape:
        raise RuntimeError(
            f"fusedlr: state {RESIDUAL_KEY!r} must be int8 of the parameter's shape {tuple(param.shape)}; "
            f"got {value.dtype} of shape {tuple(value.shape)}"
        )
    if param.dtype != torch.bfloat16:
        raise RuntimeError(
            f"fusedlr: state {RESIDUAL_KEY!r} belongs to a bfloat16 parameter; this one is {param.dtype}"
        )
