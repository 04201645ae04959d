"""Preview a schedule: ``python -m fusedlr.schedules NAME key=value ... [--steps N] [--png PATH]``.

    python -m fusedlr.schedules WarmupCosine warmup_steps=100 total_steps=1000 min_lr_ratio=0.1

prints the lr at evenly spaced updates and writes a PNG of the whole curve (NAME.png unless
--png says otherwise; --no-png to skip). Values are Python literals (``milestones=[30,60]``).
"""

from __future__ import annotations

import argparse
import ast
import sys

from . import __all__ as public_names
from .base import Schedule


def _schedule_classes():
    from . import __dict__ as names

    return {n: names[n] for n in public_names if isinstance(names.get(n), type) and issubclass(names[n], Schedule)}


def main(argv=None) -> int:
    classes = _schedule_classes()
    parser = argparse.ArgumentParser(prog="python -m fusedlr.schedules", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=sorted(n for n in classes if n != "Schedule"), metavar="NAME")
    parser.add_argument("arguments", nargs="*", metavar="key=value", help="constructor arguments")
    parser.add_argument("--steps", type=int, default=None, help="updates to preview (default: about 1.2x its length)")
    parser.add_argument("--base-lr", type=float, default=1.0, help="the group lr the schedule scales")
    parser.add_argument("--png", default=None, help="where to write the plot (default: NAME.png)")
    parser.add_argument("--no-png", action="store_true")
    args = parser.parse_args(argv)

    kwargs = {}
    for item in args.arguments:
        key, sep, text = item.partition("=")
        if not sep:
            parser.error(f"expected key=value, got {item!r}")
        try:
            kwargs[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            kwargs[key] = text  # a bare word, such as mode=triangular2
    try:
        schedule = classes[args.name](**kwargs)
    except (TypeError, ValueError) as error:
        parser.error(str(error))

    steps = args.steps or _default_horizon(kwargs)
    values = schedule.preview(steps, args.base_lr)
    print(schedule)
    print(f"{'update':>8}  lr")
    for k in sorted({round(i * (steps - 1) / 20) for i in range(21)}):
        print(f"{k:>8}  {values[k]:.6g}")
    print(f"min {min(values):.6g}  max {max(values):.6g}  over {steps} updates")
    if not args.no_png:
        path = args.png or f"{args.name}.png"
        try:
            schedule.plot(steps, path=path, base_lr=args.base_lr)
        except ImportError as error:
            print(f"no plot: {error}", file=sys.stderr)
            return 0
        print(f"wrote {path}")
    return 0


def _default_horizon(kwargs) -> int:
    lengths = [
        v for k, v in kwargs.items() if isinstance(v, int) and ("steps" in k or k in ("T_max", "T_0", "total_iters"))
    ]
    return max(10, int(1.2 * max(lengths))) if lengths else 1000


if __name__ == "__main__":
    sys.exit(main())
