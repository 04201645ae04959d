"""A schedule program evaluated with torch ops on a device tensor ``k``: no kernel of ours, no sync.

The twin of ``program.run_on_host`` for reading, not for stepping: ``opt.current_lr()`` uses it
to turn the optimizer's device counter into the lr the kernels applied, without copying the
counter to the host. Instructions whose operands are all constants are folded on the host with
the host interpreter's own functions; only the ``k``-dependent ones launch (tiny) torch ops, each
written to give what the host interpreter gives (Python's ``min``/``max`` order, ``0 ** -x = inf``,
overflow to ``+inf``).
"""

from __future__ import annotations

import math

import torch

from .program import _HOST_OPS, OPCODES, Program

_OP = OPCODES


def _is_tensor(x) -> bool:
    return isinstance(x, torch.Tensor)


def _pow(a, b):
    """``program._pow`` on tensors: IEEE pow, except that 0 ** negative and overflows from finite
    operands are +inf (the host interpreter catches math.pow's errors that way)."""
    result = torch.pow(a, b)
    a_t = a if _is_tensor(a) else torch.full_like(result, a)
    b_t = b if _is_tensor(b) else torch.full_like(result, b)
    overflow = torch.isinf(result) & torch.isfinite(a_t) & torch.isfinite(b_t)
    zero_to_negative = (a_t == 0.0) & (b_t < 0.0)
    return torch.where(overflow | zero_to_negative, math.inf, result)


def _where(cond, if_true, if_false, like):
    if not _is_tensor(if_true) and not _is_tensor(if_false):
        if_true = torch.full_like(like, if_true)  # torch.where of two Python floats would be float32
    return torch.where(cond, if_true, if_false)


_DEVICE_OPS = {
    _OP["add"]: lambda a, b, c, k: a + b,
    _OP["sub"]: lambda a, b, c, k: a - b,
    _OP["mul"]: lambda a, b, c, k: a * b,
    _OP["div"]: lambda a, b, c, k: (a if _is_tensor(a) else torch.full_like(k, a)) / b,
    # Python's min(a, b) is ``b if b < a else a`` (and max ``b if b > a else a``): NaN handling included.
    _OP["min"]: lambda a, b, c, k: _where(b < a, b, a, k),
    _OP["max"]: lambda a, b, c, k: _where(b > a, b, a, k),
    _OP["lt"]: lambda a, b, c, k: (a < b).to(torch.float64),
    _OP["le"]: lambda a, b, c, k: (a <= b).to(torch.float64),
    _OP["cos"]: lambda a, b, c, k: torch.cos(a),
    _OP["sqrt"]: lambda a, b, c, k: torch.sqrt(a),
    _OP["exp"]: lambda a, b, c, k: torch.exp(a),
    _OP["log"]: lambda a, b, c, k: torch.log(a),
    _OP["floor"]: lambda a, b, c, k: torch.floor(a),
    _OP["pow"]: lambda a, b, c, k: _pow(a, b),
    _OP["abs"]: lambda a, b, c, k: torch.abs(a),
}


_UNARY = {_OP[name] for name in ("cos", "sqrt", "exp", "log", "floor", "abs")}


def run_on_device(program: Program, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, offset)`` at every update index in ``k`` (an integer or float tensor, any shape,
    on any device), as float64 tensors of ``k``'s shape and device."""
    k = k.to(torch.float64)
    regs: list = [k]
    for op, a, b, c, imm in program.instructions:
        if op == _OP["const"]:
            regs.append(imm)
            continue
        x, y, z = regs[a], regs[b], regs[c]
        if op in _UNARY:
            y = z = 0.0  # unused operand slots point at register 0 (k)
        elif op != _OP["where"]:
            z = 0.0
        if op == _OP["where"]:
            if not _is_tensor(x):  # a constant condition: choose on the host
                regs.append(y if x != 0.0 else z)
            else:
                regs.append(_where(x != 0.0, y, z, k))
        elif not (_is_tensor(x) or _is_tensor(y)):
            regs.append(_HOST_OPS[op](x, y, z))  # constants only: fold as the host does
        else:
            regs.append(_DEVICE_OPS[op](x, y, z, k))

    def as_tensor(value):
        return value if _is_tensor(value) else torch.full_like(k, value)

    return as_tensor(regs[program.scale_register]), as_tensor(regs[program.offset_register])
