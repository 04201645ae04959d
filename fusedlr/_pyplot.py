"""matplotlib, imported only when something is drawn (``import fusedlr`` never needs it)."""

from __future__ import annotations


def pyplot(user: str, extra: str = "tools", to_file_only: bool = True):
    """``matplotlib.pyplot`` for ``user`` (named in the error when matplotlib is missing, with the
    extra that installs it). With ``to_file_only``, the Agg backend: no display is needed."""
    try:
        import matplotlib

        if to_file_only:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError(f"{user} needs matplotlib: pip install 'fusedlr[{extra}]'") from error
    return plt


def finish(figure, ax, path):
    """Lay out and save a figure this code made (``figure`` None: drawn into the caller's ``ax``,
    left to the caller); returns the figure."""
    if figure is not None:
        figure.tight_layout()
        if path is not None:
            figure.savefig(path, dpi=120)
            import matplotlib.pyplot as plt

            plt.close(figure)
    return figure if figure is not None else ax.figure
