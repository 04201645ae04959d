"""fusedlr: fused optimizer steps (clip + schedule + weight decay + AdamW/LION/SGD/Schedule-Free AdamW) for PyTorch."""

from . import schedules
from ._backends import available_backends
from .grouping import param_groups
from .lr_finder import find_lr
from .lr_scheduler import AppliedLRScheduler
from .optim import AdamW, Lion
from .schedule_free import AdamWScheduleFree
from .sgd import SGD

__all__ = [
    "AdamW",
    "Lion",
    "SGD",
    "AdamWScheduleFree",
    "AppliedLRScheduler",
    "schedules",
    "available_backends",
    "find_lr",
    "param_groups",
]
__version__ = "0.1.0"
