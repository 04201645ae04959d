"""The LR range test: ``fusedlr.find_lr`` (see ``range_test.find_lr``).

tqdm (progress bar) and matplotlib (``RangeTestResult.plot``) are imported only when used:
``pip install 'fusedlr[tools]'``.
"""

from .range_test import find_lr
from .result import RangeTestResult
from .snapshot import TrainingSnapshot
from .suggest import minimum, steep, suggestions, valley

__all__ = ["find_lr", "RangeTestResult", "TrainingSnapshot", "steep", "valley", "minimum", "suggestions"]
