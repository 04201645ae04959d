"""Learning-rate schedules evaluated on the device, inside the optimizer step.

Update ``k`` (0 for the first update the optimizer applies) of a group whose lr is ``base_lr``
uses ``schedule.lr(k, base_lr)``; for relative schedules that is ``base_lr * schedule(k)``,
exactly as ``LambdaLR(optimizer, schedule)`` stepped after each ``optimizer.step()``. Each
schedule is one expression (``program.py``) run by the host, the Triton kernels and the CUDA
backend alike. A plain Python callable ``k -> float`` is accepted by the optimizers too,
evaluated on the host (not graph-capturable).
"""

from .base import Schedule
from .composite import Chained, Sequential
from .library import (
    Constant,
    ConstantFactor,
    CosineAnnealing,
    CosineRestarts,
    Cyclic,
    Exponential,
    InverseSqrt,
    Linear,
    MultiStep,
    OneCycle,
    Polynomial,
    Step,
    WarmupConstant,
    WarmupCosine,
    WarmupCosineHardRestarts,
    WarmupCosineLrRate,
    WarmupLinear,
    WarmupMultiStep,
    WarmupPolynomial,
    WarmupStableDecay,
    WarmupStableExpDecay,
)
from .lrbench import (
    CosineCycle,
    InverseDecay,
    PolynomialDecay,
    RestartCycle,
    Scaled,
    Sigmoid,
    SineCycle,
    TriangularCycle,
    lrbench_policy,
)
from .ramp import RangeTestRamp
from .scaling import linear_scaled_lr, max_lr_rule_of_thumb, sqrt_scaled_lr

__all__ = [
    "Schedule",
    "Constant",
    "WarmupConstant",
    "WarmupLinear",
    "WarmupCosine",
    "WarmupCosineHardRestarts",
    "WarmupCosineLrRate",
    "WarmupPolynomial",
    "InverseSqrt",
    "WarmupStableDecay",
    "Step",
    "MultiStep",
    "Exponential",
    "Linear",
    "ConstantFactor",
    "Polynomial",
    "CosineAnnealing",
    "CosineRestarts",
    "Cyclic",
    "OneCycle",
    "WarmupStableExpDecay",
    "WarmupMultiStep",
    "Sequential",
    "Chained",
    "InverseDecay",
    "Sigmoid",
    "PolynomialDecay",
    "TriangularCycle",
    "SineCycle",
    "CosineCycle",
    "RestartCycle",
    "Scaled",
    "lrbench_policy",
    "RangeTestRamp",
    "linear_scaled_lr",
    "sqrt_scaled_lr",
    "max_lr_rule_of_thumb",
    "check_schedule",
]


def check_schedule(schedule) -> None:
    """Constructor-time validation of an optimizer's ``schedule`` argument."""
    if isinstance(schedule, Schedule):
        _ = schedule.program  # compiled now: a ValueError here, not at the first step, if it is too long
        return
    if schedule is None or callable(schedule):
        return
    raise ValueError(
        f"Invalid schedule: {schedule!r} (expected a fusedlr.schedules.Schedule, a callable k -> float, or None)"
    )
