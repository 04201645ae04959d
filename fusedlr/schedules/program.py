"""One description of a schedule, evaluated three ways.

A schedule is written once as a small float64 expression of the update index ``k`` (see
``library.py``). The expression compiles to a straight-line *program*: a list of instructions
``(opcode, a, b, c, immediate)`` in SSA form, where register 0 holds ``k`` and instruction
``i`` writes register ``i + 1``. The same program is run

* on the host by ``run_on_host`` (Python floats, IEEE semantics), for the ``torch`` backend,
  ``schedule(k)``, previews and plots;
* on the device by the Triton finalize kernel (``fusedlr/_triton/kernels.py``,
  ``_run_schedule_program``), which reads it from the optimizer's hyperparameter table;
* by the CUDA backend, when it lands, from the same table.

so there is no second copy of any formula to drift. A program has two outputs, ``scale`` and
``offset``: the lr of a group whose configured lr is ``base_lr`` is ``base_lr * scale + offset``.
Relative schedules (Hugging Face's, StepLR, ...) have ``offset == 0``; torch schedulers that
take absolute learning rates (``eta_min``, ``max_lr``) put those in ``offset``.

Every instruction is evaluated on every run (there are no jumps), so ``where`` chooses between
values that were both computed; operations are total (division by zero gives inf or nan, as
IEEE says) so that an unused branch never raises.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Opcodes: numbers shared with the device interpreters. Append only; never renumber.
OPCODES = {
    "const": 0,  # immediate
    "add": 1,
    "sub": 2,
    "mul": 3,
    "div": 4,
    "min": 5,
    "max": 6,
    "lt": 7,  # 1.0 if a < b else 0.0
    "le": 8,
    "where": 9,  # b if a != 0 else c
    "cos": 10,
    "sqrt": 11,
    "exp": 12,
    "log": 13,
    "floor": 14,
    "pow": 15,
    "abs": 16,
}
INSTRUCTION_WIDTH = 5  # opcode, a, b, c, immediate
MAX_REGISTERS = 256  # register file of the device interpreter: k plus 255 instructions
MAX_INSTRUCTIONS = MAX_REGISTERS - 1  # a schedule's bound, checked when it is constructed


class Expr:
    """A node of a schedule expression. Build with arithmetic, comparisons and the functions
    below; equal sub-expressions are shared when the program is compiled."""

    __slots__ = ("op", "args", "value")

    def __init__(self, op: str, args: tuple = (), value: float = 0.0):
        self.op, self.args, self.value = op, args, float(value)

    def __add__(self, other):
        return Expr("add", (self, lift(other)))

    def __radd__(self, other):
        return Expr("add", (lift(other), self))

    def __sub__(self, other):
        return Expr("sub", (self, lift(other)))

    def __rsub__(self, other):
        return Expr("sub", (lift(other), self))

    def __mul__(self, other):
        return Expr("mul", (self, lift(other)))

    def __rmul__(self, other):
        return Expr("mul", (lift(other), self))

    def __truediv__(self, other):
        return Expr("div", (self, lift(other)))

    def __rtruediv__(self, other):
        return Expr("div", (lift(other), self))

    def __pow__(self, other):
        return Expr("pow", (self, lift(other)))

    def __rpow__(self, other):
        return Expr("pow", (lift(other), self))

    def __neg__(self):
        return Expr("sub", (lift(0.0), self))

    def __lt__(self, other):
        return Expr("lt", (self, lift(other)))

    def __le__(self, other):
        return Expr("le", (self, lift(other)))

    def __gt__(self, other):
        return Expr("lt", (lift(other), self))

    def __ge__(self, other):
        return Expr("le", (lift(other), self))

    def __bool__(self):
        raise TypeError("a schedule expression has no truth value on the host: use where(cond, a, b)")

    __hash__ = object.__hash__


def lift(x) -> Expr:
    return x if isinstance(x, Expr) else Expr("const", value=float(x))


K = Expr("k")  # the update index, as a float64


def where(cond, if_true, if_false) -> Expr:
    return Expr("where", (lift(cond), lift(if_true), lift(if_false)))


def minimum(a, b) -> Expr:
    return Expr("min", (lift(a), lift(b)))


def maximum(a, b) -> Expr:
    return Expr("max", (lift(a), lift(b)))


def cos(x) -> Expr:
    return Expr("cos", (lift(x),))


def sqrt(x) -> Expr:
    return Expr("sqrt", (lift(x),))


def exp(x) -> Expr:
    return Expr("exp", (lift(x),))


def log(x) -> Expr:
    return Expr("log", (lift(x),))


def floor(x) -> Expr:
    return Expr("floor", (lift(x),))


def absolute(x) -> Expr:
    return Expr("abs", (lift(x),))


def fmod1(x) -> Expr:
    """``x % 1.0`` as Python computes it for x >= 0 (exact: x - floor(x) is representable)."""
    x = lift(x)
    return x - floor(x)


# ----- compiled programs --------------------------------------------------------------------------


@dataclass(frozen=True)
class Program:
    instructions: tuple  # of (opcode, a, b, c, immediate)
    scale_register: int
    offset_register: int

    def flat(self) -> list[float]:
        """The program as float64 numbers, the layout the device interpreters read."""
        return [float(x) for instruction in self.instructions for x in instruction]

    @property
    def has_offset(self) -> bool:
        """True unless the offset output is the constant 0 (a purely relative schedule)."""
        if self.offset_register == 0:
            return True
        op, _, _, _, imm = self.instructions[self.offset_register - 1]
        return not (op == OPCODES["const"] and imm == 0.0)


def compile_program(scale: Expr, offset: Expr) -> Program:
    instructions: list[tuple] = []
    registers: dict = {}  # structural key -> register

    def visit(node: Expr) -> int:
        if node.op == "k":
            return 0
        args = tuple(visit(a) for a in node.args)
        if node.op == "where" and args[1] == args[2]:
            return args[1]  # both branches are one value (e.g. the 0 offsets of relative pieces)
        key = (node.op, args, node.value if node.op == "const" else 0.0)
        if key not in registers:
            a, b, c = (args + (0, 0, 0))[:3]
            instructions.append((OPCODES[node.op], a, b, c, key[2]))
            registers[key] = len(instructions)
        return registers[key]

    try:
        scale_register = visit(lift(scale))
        offset_register = visit(lift(offset))
    except RecursionError:  # nested far deeper than the register file could hold anyway
        raise ValueError(
            f"schedule too complex: nested deeper than Python's recursion limit (at most {MAX_INSTRUCTIONS} "
            "instructions fit the device interpreter's register file)"
        ) from None
    if len(instructions) > MAX_INSTRUCTIONS:
        raise ValueError(
            f"schedule too complex: {len(instructions)} instructions (at most {MAX_INSTRUCTIONS}, the device "
            "interpreter's register file); use fewer pieces, or a plain callable k -> float (evaluated on the host)"
        )
    return Program(tuple(instructions), scale_register, offset_register)


# ----- the host interpreter: IEEE float64 semantics, never raising --------------------------------


def _div(a, b):
    if b != 0.0:
        return a / b
    if a == 0.0 or math.isnan(a):
        return math.nan
    return math.copysign(math.inf, a) * math.copysign(1.0, b)


def _sqrt(a):
    return math.sqrt(a) if a >= 0.0 else (a if math.isnan(a) else math.nan)


def _exp(a):
    try:
        return math.exp(a)
    except OverflowError:
        return math.inf


def _log(a):
    if a > 0.0:
        return math.log(a)
    return -math.inf if a == 0.0 else math.nan


def _floor(a):
    return float(math.floor(a)) if math.isfinite(a) else a


def _pow(a, b):
    if a < 0.0 and b != math.floor(b):
        return math.nan
    try:
        return math.pow(a, b)
    except OverflowError:
        return math.inf
    except ValueError:  # 0 ** negative
        return math.inf


def _cos(a):
    return math.cos(a) if math.isfinite(a) else math.nan


_HOST_OPS = {
    OPCODES["add"]: lambda a, b, c: a + b,
    OPCODES["sub"]: lambda a, b, c: a - b,
    OPCODES["mul"]: lambda a, b, c: a * b,
    OPCODES["div"]: lambda a, b, c: _div(a, b),
    OPCODES["min"]: lambda a, b, c: min(a, b),
    OPCODES["max"]: lambda a, b, c: max(a, b),
    OPCODES["lt"]: lambda a, b, c: 1.0 if a < b else 0.0,
    OPCODES["le"]: lambda a, b, c: 1.0 if a <= b else 0.0,
    OPCODES["where"]: lambda a, b, c: b if a != 0.0 else c,
    OPCODES["cos"]: lambda a, b, c: _cos(a),
    OPCODES["sqrt"]: lambda a, b, c: _sqrt(a),
    OPCODES["exp"]: lambda a, b, c: _exp(a),
    OPCODES["log"]: lambda a, b, c: _log(a),
    OPCODES["floor"]: lambda a, b, c: _floor(a),
    OPCODES["pow"]: lambda a, b, c: _pow(a, b),
    OPCODES["abs"]: lambda a, b, c: abs(a),
}


def run_on_host(program: Program, k: int) -> tuple[float, float]:
    """``(scale, offset)`` at update ``k``."""
    regs = [float(k)]
    for op, a, b, c, imm in program.instructions:
        if op == OPCODES["const"]:
            regs.append(imm)
        else:
            regs.append(_HOST_OPS[op](regs[a], regs[b], regs[c]))
    return regs[program.scale_register], regs[program.offset_register]
