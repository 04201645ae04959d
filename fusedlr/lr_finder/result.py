"""What a range test returns: the curve, its suggestions and a plot."""

from __future__ import annotations

from dataclasses import dataclass, field

from . import suggest


@dataclass
class RangeTestResult:
    """``lrs[i]`` is the lr of update ``i`` (of the reference group: the one with the largest lr;
    other groups kept their ratio to it), ``losses[i]`` the loss of the batch that update
    trained on, ``smoothed_losses[i]`` the debiased exponential average of ``losses[: i + 1]``.
    With a fusedlr optimizer an update that a GradScaler skipped does not advance the sweep: the
    next point repeats its lr (the suggestions keep one point per lr).
    ``suggestions`` maps each rule (``steep``, ``valley``, ``minimum``; see
    ``fusedlr.lr_finder.suggest``) to its lr; ``suggestion`` is the one named by ``rule``."""

    lrs: list[float]
    losses: list[float]
    smoothed_losses: list[float]
    suggestions: dict = field(default_factory=dict)
    rule: str = "valley"
    stopped_early: bool = False
    beta: float = 0.98

    @property
    def suggestion(self) -> float | None:
        return self.suggestions.get(self.rule)

    def suggest(self, rules=tuple(suggest.RULES), skip_start=None, skip_end=5) -> dict:
        """Suggestions again for ``rules`` (names, or one name), with other trimming (see
        ``fusedlr.lr_finder.suggest.trimmed``)."""
        return suggest.suggestions(self.lrs, self.smoothed_losses, rules, skip_start, skip_end)

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v:.3g}" if v is not None else f"{k}=None" for k, v in self.suggestions.items())
        stop = ", stopped early (diverged)" if self.stopped_early else ""
        span = f"{self.lrs[0]:.3g}..{self.lrs[-1]:.3g}" if self.lrs else "-"
        return f"RangeTestResult({len(self.lrs)} points, lr {span}{stop}; suggestions: {shown})"

    def plot(self, path=None, ax=None, show_raw: bool = True):
        """Loss against lr (log axis): the raw losses faintly, the smoothed curve, each suggestion
        marked. Saved to ``path`` when given. Needs matplotlib (``pip install 'fusedlr[tools]'``)."""
        from .._pyplot import finish, pyplot

        plt = pyplot("RangeTestResult.plot", "tools", to_file_only=path is not None and ax is None)
        figure = None
        if ax is None:
            figure, ax = plt.subplots(figsize=(7, 4))
        if show_raw:
            ax.plot(self.lrs, self.losses, color="0.75", linewidth=0.8, label="loss")
        ax.plot(self.lrs, self.smoothed_losses, color="C0", linewidth=1.6, label=f"smoothed loss (beta {self.beta:g})")
        markers = {"steep": ("C3", "v"), "valley": ("C2", "o"), "minimum": ("C1", "s")}
        for name, lr in self.suggestions.items():
            if lr is None:
                continue
            at = min(range(len(self.lrs)), key=lambda i: abs(self.lrs[i] - lr))
            color, marker = markers.get(name, ("k", "x"))
            label = f"{name}: {lr:.2e}" + (" (min / 10)" if name == "minimum" else "")
            ax.scatter([lr], [self.smoothed_losses[at]], color=color, marker=marker, s=60, zorder=3, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss")
        finite = [v for v in self.smoothed_losses if v == v and abs(v) != float("inf")]
        if finite:  # up to the minimum, and a little above: the divergence would flatten the rest
            lowest = finite.index(min(finite))
            shown = finite[: lowest + 1] + [v for v in self.losses[: lowest + 1] if v == v and abs(v) != float("inf")]
            low, high = min(shown), max(finite[: lowest + 1])
            margin = 0.1 * (high - low) + 1e-12
            ax.set_ylim(low - margin, high + 3 * margin)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        ax.set_title("LR range test", fontsize=10)
        return finish(figure, ax, path)
