"""Low-precision training options shared by every backend: which dtype each tensor of a step
is stored in, and the rounding of the fp32 results back into storage.

A step always computes in float32 (float64 for float64 params) and rounds once per stored
value: round-to-nearest-even, or for ``stochastic_rounding`` a rounding up with probability
equal to the discarded fraction, drawn from a counter-based hash of (seed, parameter position,
update index, element index). The hash is plain 32-bit integer arithmetic, so the torch
backend, the Triton kernels and the interpreter draw the same bits.
"""

from __future__ import annotations

import torch

from . import _quantized, _split_master

LOW_PRECISION = (torch.bfloat16, torch.float16)
STATE_DTYPES = (None, torch.float32, torch.bfloat16, _quantized.INT8)
MASK32 = 0xFFFFFFFF
# lowbias32 (C. Wellons, "Prospecting for hash functions"): a well-mixed 32-bit permutation.
HASH_MUL1 = 0x7FEB352D
HASH_MUL2 = 0x846CA68B


def check_group_options(group: dict) -> None:
    """ValueErrors for the precision options of a param group, as the constructor raises them."""
    if group["state_dtype"] not in STATE_DTYPES:
        raise ValueError(
            f"Invalid state_dtype: {group['state_dtype']} (choose None, torch.float32, torch.bfloat16 or 'int8')"
        )
    _quantized.check_group(group)
    if group["master_weights"] not in (False, True, _split_master.SPLIT):
        raise ValueError(f"Invalid master_weights: {group['master_weights']!r} (choose False, True or 'split')")
    if group["master_weights"] and group["stochastic_rounding"]:
        raise ValueError(
            "master_weights and stochastic_rounding exclude each other: with an fp32 master copy the "
            "param is a rounded copy (round-to-nearest-even); stochastic rounding is for params without one"
        )
    seed = group["seed"]
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MASK32:
        raise ValueError(f"Invalid seed: {seed!r} (an int in [0, 2**32))")


def master_option(value):
    """The constructor's ``master_weights`` as stored in a group: a bool, or ``"split"``."""
    return value if isinstance(value, str) else bool(value)


def has_master(param: torch.Tensor, group: dict) -> bool:
    """An fp32 master copy (``master_weights=True``) beside a bf16/fp16 param."""
    option = group["master_weights"]
    return option != _split_master.SPLIT and bool(option) and param.dtype in LOW_PRECISION


def has_split_master(param: torch.Tensor, group: dict) -> bool:
    """A bf16 param plus an int8 residual (``master_weights="split"``, fusedlr/_split_master.py)."""
    return _split_master.uses_split(param, group)


def rounds_stochastically(param: torch.Tensor, group: dict) -> bool:
    return bool(group["stochastic_rounding"]) and param.dtype in LOW_PRECISION


def state_dtype(param: torch.Tensor, group: dict) -> torch.dtype:
    """Storage dtype of exp_avg / exp_avg_sq / max_exp_avg_sq: ``state_dtype`` when set, else
    float32 beside an fp32 master copy, else the param's own dtype (as torch.optim). With
    ``"int8"``: float32, the dtype the moments are computed in (and stored in, for tensors too
    small to quantise; fusedlr/_quantized.py)."""
    if param.dtype == torch.float64:
        return torch.float64
    if group["state_dtype"] == _quantized.INT8:
        return torch.float32
    if group["state_dtype"] is not None:
        return group["state_dtype"]
    return torch.float32 if has_master(param, group) or has_split_master(param, group) else param.dtype


def check_param_options(param: torch.Tensor, grad: torch.Tensor, group: dict, name: str) -> None:
    """RuntimeErrors, before anything is modified, for a param the options cannot serve."""
    if rounds_stochastically(param, group) and param.dtype != torch.bfloat16:
        raise RuntimeError(f"{name}: stochastic_rounding supports bfloat16 parameters; got {param.dtype}")
    if group["master_weights"] == _split_master.SPLIT and param.dtype == torch.float16:
        raise RuntimeError(f"{name}: master_weights='split' supports bfloat16 parameters; got {param.dtype}")
    if param.dtype == torch.float64 and group["state_dtype"] not in (None, torch.float64):
        raise RuntimeError(f"{name}: state_dtype does not apply to float64 parameters (their state is float64)")
    if grad.dtype != param.dtype and not (grad.dtype == torch.float32 and param.dtype in LOW_PRECISION):
        raise RuntimeError(
            f"{name}: a grad of dtype {grad.dtype} for a parameter of dtype {param.dtype}; grads have the "
            "param's dtype, or float32 for bfloat16/float16 params"
        )


# ----- the random stream of stochastic rounding (torch form; kernels.py has the Triton twin) -----


def hash32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on int64 tensors holding uint32 values (products wrap; the mask keeps 32 bits)."""
    x = x ^ (x >> 16)
    x = (x * HASH_MUL1) & MASK32
    x = x ^ (x >> 15)
    x = (x * HASH_MUL2) & MASK32
    return x ^ (x >> 16)


def stream_key(seed: int, position: int, update: torch.Tensor) -> torch.Tensor:
    """Per tensor and update: hash(hash(hash(seed) ^ position) + update), as an int64 0-dim tensor."""
    k = hash32(torch.tensor(seed & MASK32, dtype=torch.int64, device=update.device))
    k = hash32(k ^ (position & MASK32))
    return hash32((k + (update.to(torch.int64) & MASK32)) & MASK32)


def random_bits(key: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """16 random bits per element of ``like``, indexed by the element's offset in memory."""
    offsets = torch.arange(like.numel(), dtype=torch.int64, device=like.device)
    if like.numel():
        offsets = offsets.as_strided(like.shape, like.stride())  # dense: memory order, as the kernels
    else:
        offsets = offsets.reshape(like.shape)  # an empty shard, (0, 6) say: broadcasts as its shape
    inner = hash32((key + (offsets >> 32)) & MASK32)
    return hash32((offsets & MASK32) ^ inner) & 0xFFFF


def round_stochastically(x: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """float32 -> bfloat16, rounding up with probability equal to the dropped 16 bits' fraction."""
    bits = x.view(torch.int32).to(torch.int64) & MASK32
    bits = ((bits + random_bits(key, x)) & MASK32) >> 16
    bits = torch.where(torch.isnan(x), torch.full_like(bits, 0x7FC0), bits)
    return (bits - ((bits >> 15) << 16)).to(torch.int16).view(torch.bfloat16)
