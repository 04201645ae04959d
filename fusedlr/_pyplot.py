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
