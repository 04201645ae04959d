"""The Schedule base class: one expression, host evaluation, previews and plots."""

from __future__ import annotations

from functools import cached_property

from .program import Expr, K, Program, compile_program, run_on_host


class Schedule:
    """A learning-rate schedule evaluated inside the optimizer step, from a device counter.

    Subclasses define ``expressions(k) -> (scale, offset)`` from the update index ``k`` (an
    expression, so that composites can shift it). The lr of update ``k`` for a group whose lr
    is ``base_lr`` is ``base_lr * scale + offset``; ``offset`` is 0 except for torch schedulers
    that take absolute learning rates (``eta_min``, ``max_lr``, ``base_lr``).
    """

    def expressions(self, k: Expr) -> tuple:  # pragma: no cover - abstract
        raise NotImplementedError

    @cached_property
    def program(self) -> Program:
        scale, offset = self.expressions(K)
        return compile_program(scale, offset)

    def lr(self, k: int, base_lr: float) -> float:
        """The learning rate of update ``k`` for a group whose configured lr is ``base_lr``."""
        scale, offset = run_on_host(self.program, k)
        return base_lr * scale + offset

    def scale_offset(self, k: int) -> tuple[float, float]:
        return run_on_host(self.program, k)

    def __call__(self, k: int) -> float:
        """The multiplier of the group lr at update ``k`` (``LambdaLR``-compatible)."""
        if self.program.has_offset:
            raise ValueError(
                f"{self!r} sets absolute learning rates (eta_min, max_lr, ...), so it has no multiplier: "
                "use schedule.lr(k, base_lr)"
            )
        return run_on_host(self.program, k)[0]

    def preview(self, total_steps: int, base_lr: float = 1.0) -> list[float]:
        """The learning rates of updates 0 .. total_steps - 1 for a group lr of ``base_lr``."""
        return [self.lr(k, base_lr) for k in range(total_steps)]

    def plot(self, total_steps: int, path=None, base_lr: float = 1.0, ax=None):
        """Draw the lr curve (needs matplotlib: ``pip install fusedlr[bench]``); save to ``path``."""
        from .._pyplot import finish, pyplot

        plt = pyplot("Schedule.plot", "bench", to_file_only=path is not None and ax is None)
        figure = None
        if ax is None:
            figure, ax = plt.subplots(figsize=(7, 3.5))
        ax.plot(range(total_steps), self.preview(total_steps, base_lr), linewidth=1.5)
        ax.set_xlabel("update k")
        ax.set_ylabel("lr" if base_lr != 1.0 or self.program.has_offset else "lr multiplier")
        ax.set_title(repr(self), fontsize=8)
        ax.grid(alpha=0.3)
        return finish(figure, ax, path)


def check_int(name: str, value, *, minimum: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"Invalid {name}: {value!r} (expected an int)")
    if value < minimum:
        raise ValueError(f"Invalid {name}: {value} (must be >= {minimum})")


def check_float(name: str, value, *, low=None, high=None, low_open=False, high_open=False) -> None:
    import math

    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        bounds = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"Invalid {name}: {value!r} (must be a finite number in {bounds})")


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"Invalid {name}: {value!r} (expected one of {', '.join(map(repr, choices))})")
