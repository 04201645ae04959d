"""Split master weights (``master_weights="split"``): a bf16 param plus an int8 residual of its
rounding error stand for a float32 master weight, at 3 bytes per param instead of 6.

The float32 weight ``w`` is first rounded to 24 bits, ``q = (bits(w) + 128) >> 8`` (units of 256
in its float32 bit pattern), and then split: the param is ``q`` rounded to its upper 16 bits,
``p = (q + 128) >> 8`` (bf16, to nearest, ties up), and the residual is what is left,
``e = q - (p << 8)``, always in int8's ``[-128, 127]``: nothing is clamped. ``p`` is the bf16
nearest ``w`` except within 128 units of a tie, where it may be the other neighbour (a weight
no further than half a bf16 step from either).
The step reconstructs ``w' = float32 from q << 8 = bits(p) << 16 + 256 e``, updates it in float32
and writes ``p`` and ``e`` again, in the same pass.
Reconstruction error: ``|bits(w) - bits(w')| <= 128``, that is ``|w - w'| <= 2**-16 |w|`` for
normal numbers: about 24 significant bits of the 32. Re-encoding a reconstructed weight gives
back the same param and residual. An update of more than 128 units moves the weight; one under
128 units is rounded away (as a bf16 param loses updates under half its step).
(An earlier encoding rounded ``p`` to nearest-even and clamped the residual to [-127, 127]: a
steady update of 128 to 256 units then stalled for good at the clamp.)
Integer arithmetic only, so deterministic and the same bits in every backend. A NaN weight is
stored as bf16's quiet NaN with residual 0.
"""

from __future__ import annotations

import torch

SPLIT = "split"  # the master_weights value that asks for split master weights
RESIDUAL_KEY = "master_residual"
MASK32 = 0xFFFFFFFF


def _bits(x: torch.Tensor) -> torch.Tensor:
    """float32 bit patterns as int64 holding uint32 values."""
    return x.float().view(torch.int32).to(torch.int64) & MASK32


def split(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(bf16 param, int8 residual) that stand for the float32 weight ``w``."""
    bits = _bits(w)
    q = (bits + 128) >> 8  # w rounded to 24 bits
    high = (q + 128) >> 8  # ... and to 16: the param's bits
    nan = torch.isnan(w)
    e = torch.where(nan, 0, q - (high << 8)).to(torch.int8)
    high = torch.where(nan, 0x7FC0, high & 0xFFFF)
    param = (high - ((high >> 15) << 16)).to(torch.int16).view(torch.bfloat16)
    return param, e


def residual(w: torch.Tensor) -> torch.Tensor:
    """The int8 residual of the float32 ``w`` (beside the param ``split(w)[0]``)."""
    return split(w)[1]


def reconstruct(param: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """The float32 weight that a bf16 ``param`` and its int8 ``residual`` stand for."""
    bits = (param.view(torch.int16).to(torch.int64) & 0xFFFF) << 16
    bits = (bits + residual.to(torch.int64) * 256) & MASK32
    return (bits - ((bits >> 31) << 32)).to(torch.int32).view(torch.float32)


def store_(param: torch.Tensor, residual_out: torch.Tensor, w: torch.Tensor) -> None:
    """Write the float32 weight ``w`` as the bf16 ``param`` and its residual (``split``)."""
    bf16, e = split(w)
    residual_out.copy_(e)
    param.copy_(bf16)


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
            else:  # the param is rewritten too: the residual belongs to split(master)'s param
                state[RESIDUAL_KEY] = torch.empty_like(param, dtype=torch.int8, memory_format=torch.preserve_format)
                with torch.no_grad():
                    store_(param, state[RESIDUAL_KEY], master)
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
