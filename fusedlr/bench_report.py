"""Tables and plots from benchmarks/results/results.csv: what the README shows, generated from
the recorded rows and never typed by hand."""

from __future__ import annotations

import csv
import re
from pathlib import Path

README_START = "<!-- bench-table:start -->"
README_END = "<!-- bench-table:end -->"
# The CPU figures have their own README section, beside the GPU table.
CPU_README_START = "<!-- cpu-bench-table:start -->"
CPU_README_END = "<!-- cpu-bench-table:end -->"


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def latest_run(rows: list[dict], device_prefix: str = "", cpu: bool = False) -> list[dict]:
    """The latest rows of the most recent commit and device: for each case, optimizer, dtype and
    contender the last row recorded (``make bench`` runs AdamW and LION as separate runs).
    GPU rows, or with ``cpu`` the CPU rows of runs on all cores (not ``--threads`` runs)."""
    rows = [r for r in rows if r["device"].startswith(device_prefix) and r["device"].startswith("CPU") == cpu]
    if cpu:
        rows = [r for r in rows if "thread" not in r["device"]]
    if not rows:
        return []
    last = rows[-1]
    latest = {}
    for r in rows:
        if (r["commit"], r["device"]) == (last["commit"], last["device"]):
            latest[(r["case"], r["optimizer"], r.get("dtype"), r["contender"])] = r
    return list(latest.values())


def _panel(row) -> tuple:
    """Rows compared with each other: one case, optimizer and dtype."""
    return row["case"], row["optimizer"], row.get("dtype") or "float32"


def markdown_table(run: list[dict]) -> str:
    if not run:
        return "No GPU results recorded yet: run `make bench` on a GPU machine."
    head = run[0]
    if head["device"].startswith("CPU"):
        versions = f"CPU figures: {head['device']}, torch {head['torch']}"
    else:
        versions = f"{head['device']}, torch {head['torch']}, Triton {head['triton']}, CUDA {head['cuda']}"
    lines = [
        f"{versions}, fusedlr {head['commit']}, {head['date']} UTC. Median of the timed steps; GB/s counts the "
        "fused step's bytes for every contender; speedup is the best fusedlr backend's over each row.",
        "",
        "| case | optimizer | contender | ms (p50) | GB/s | of copy | speedup | first step s |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for panel in dict.fromkeys(_panel(r) for r in run):
        case_rows = [r for r in run if _panel(r) == panel]
        best = min((r for r in case_rows if r["contender"].startswith("fusedlr")), key=lambda r: float(r["ms_p50"]))
        for r in case_rows:
            speedup = float(r["ms_p50"]) / float(best["ms_p50"])
            lines.append(
                f"| {r['case']} | {r['optimizer']} | {r['contender']} | {float(r['ms_p50']):.3f} "
                f"| {float(r['gbps']):.0f} "
                f"| {float(r['fraction_of_copy']):.2f} | {speedup:.2f}x | {float(r.get('first_step_s') or 0):.2f} |"
            )
    return "\n".join(lines)


def plot(run: list[dict], path: Path) -> None:
    """One panel per case: ms per step of each contender."""
    from ._pyplot import pyplot

    plt = pyplot("the benchmark plot", "bench")

    panels = list(dict.fromkeys(_panel(r) for r in run))
    columns = min(4, len(panels))
    rows_of_panels = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows_of_panels, columns, figsize=(4.5 * columns, 3.4 * rows_of_panels), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, panel in zip(axes.flat, panels):
        rows = [r for r in run if _panel(r) == panel]
        names = [r["contender"] for r in rows]
        values = [float(r["ms_p50"]) for r in rows]
        colors = ["tab:green" if n.startswith("fusedlr") else "tab:gray" for n in names]
        ax.barh(names, values, color=colors)
        ax.set_title(" ".join(p for p in panel if p and p != "float32"), fontsize=9)
        ax.set_xlabel("ms per step (p50)")
        ax.tick_params(labelsize=7)
    figure.suptitle(f"{run[0]['device']} - fusedlr {run[0]['commit']}", fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def update_readme(readme: Path, table: str, plot_path: str | None, *, cpu: bool = False) -> None:
    start, end = (CPU_README_START, CPU_README_END) if cpu else (README_START, README_END)
    text = readme.read_text()
    block = table + (f"\n\n![latest GPU benchmark]({plot_path})" if plot_path else "")
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise ValueError(f"{readme} has no {start} ... {end} section")
    readme.write_text(pattern.sub(lambda _: f"{start}\n{block}\n{end}", text))
