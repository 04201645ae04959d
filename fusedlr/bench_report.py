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


# The contenders the plot sets apart: fusedlr's fused backends, its plain-PyTorch reference (the
# readable spec, not a contender for speed) and everything else (the baselines users have).
REFERENCE = "fusedlr-torch"


def _role(contender: str) -> str:
    if contender == REFERENCE or contender.startswith(REFERENCE + "-"):
        return "reference"
    return "fusedlr" if contender.startswith("fusedlr") else "baseline"


def plot_layout(run: list[dict]) -> dict:
    """What the plot draws, as data: rows of panels. ``speed``: one panel per fp32 case and
    optimizer, ``bf16``: the same for bf16 (or other low-precision) rows, each a list of
    ``(contender, role, fraction of copy, ms)`` with fusedlr's backends first, the baselines
    next and the reference last; ``memory``: per low-precision panel (fp32 where none),
    ``(contender, role, peak MB, bytes per parameter)``."""
    order = {"fusedlr": 0, "baseline": 1, "reference": 2}
    layout = {"speed": [], "bf16": [], "memory": []}
    for panel in dict.fromkeys(_panel(r) for r in run):
        rows = sorted((r for r in run if _panel(r) == panel), key=lambda r: order[_role(r["contender"])])
        bars = [(r["contender"], _role(r["contender"]), float(r["fraction_of_copy"]), float(r["ms_p50"])) for r in rows]
        layout["speed" if panel[2] == "float32" else "bf16"].append((panel, bars))
    memory_panels = [panel for panel, _ in layout["bf16"]] or [panel for panel, _ in layout["speed"]]
    for panel in memory_panels:
        rows = [r for r in run if _panel(r) == panel and float(r.get("peak_mem_mb") or 0) > 0]
        rows.sort(key=lambda r: order[_role(r["contender"])])
        bars = [
            (r["contender"], _role(r["contender"]), float(r["peak_mem_mb"]),
             float(r["peak_mem_mb"]) * 2**20 / max(int(r["numel"]), 1))
            for r in rows
        ]  # fmt: skip
        if bars:
            layout["memory"].append((panel, bars))
    return layout


_COLORS = {"fusedlr": "tab:green", "baseline": "tab:gray", "reference": "white"}


def plot(run: list[dict], path: Path) -> None:
    """Each contender's fraction of the copy bandwidth measured in the same run (the roofline at
    1.0), per case: fusedlr's fused backends in green, the baselines in grey, fusedlr's torch
    reference apart (hollow, last); bf16 cases in their own row; peak memory (and bytes per
    parameter, all tensors counted) in the last row."""
    from ._pyplot import pyplot

    plt = pyplot("the benchmark plot", "bench")
    layout = plot_layout(run)
    rows = [(name, panels) for name, panels in layout.items() if panels]
    columns = max(len(panels) for _, panels in rows)
    figure, axes = plt.subplots(len(rows), columns, figsize=(4.6 * columns, 3.3 * len(rows)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for row, (name, panels) in enumerate(rows):
        for ax, (panel, bars) in zip(axes[row], panels):
            ax.axis("on")
            labels = [c + (" (reference)" if role == "reference" else "") for c, role, _, _ in bars]
            values = [value for _, _, value, _ in bars]
            colors = [_COLORS[role] for _, role, _, _ in bars]
            ax.barh(labels, values, color=colors, edgecolor=["tab:green" if c == "white" else c for c in colors])
            ax.invert_yaxis()  # fusedlr on top
            title = " ".join(p for p in panel if p)
            if name == "memory":
                ax.set_title(f"{title}: peak memory", fontsize=9)
                ax.set_xlabel("peak MB (bytes per parameter at the bar)")
                for y, (_, _, mb, per_param) in enumerate(bars):
                    ax.text(mb, y, f" {per_param:.1f} B/p", va="center", fontsize=7)
            else:
                ax.set_title(title, fontsize=9)
                ax.axvline(1.0, color="black", linestyle="--", linewidth=0.8)
                ax.set_xlim(0, max(1.1, max(values) * 1.1))
                ax.set_xlabel("fraction of copy bandwidth (roofline 1.0)")
                for y, (_, _, fraction, ms) in enumerate(bars):
                    ax.text(fraction, y, f" {ms:.2f} ms", va="center", fontsize=7)
            ax.tick_params(labelsize=7)
    figure.suptitle(f"{run[0]['device']} - fusedlr {run[0]['commit']} - {run[0]['date']}", fontsize=9)
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
