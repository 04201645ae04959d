"""The benchmark harness on the CPU: it runs, checks every contender's result, and its report
(README table, plot) is generated from CSV rows."""

import csv

import pytest
import torch

from fusedlr import bench, bench_report


def test_quick_cpu_run_records_checked_rows(tmp_path):
    out = tmp_path / "results.csv"
    rows = bench.run(bench.parse_args(["--quick", "--case", "many_small_cpu", "--csv", str(out)]))
    names = [r["contender"] for r in rows]
    assert names[0] == "fusedlr-torch" and "torch-adamw-fused+clip" in names
    with out.open() as f:
        recorded = list(csv.DictReader(f))
    assert [r["contender"] for r in recorded] == names
    assert all(r["device"].startswith("CPU") and float(r["ms_p50"]) > 0 for r in recorded)


def test_lion_baseline_is_lion_pytorch():
    rows = bench.run(bench.parse_args(["--quick", "--optimizer", "lion", "--case", "gpt2_cpu", "--no-record"]))
    assert [r["contender"] for r in rows] == ["fusedlr-torch", "lion-pytorch+clip"]


def test_unknown_baseline_is_refused():
    with pytest.raises(SystemExit, match="unknown baselines"):
        bench.contenders("adamw", bench.torch.device("cpu"), ["apex"])


def _fake_gpu_rows():
    base = dict(date="2026-11-22 10:00", commit="abc1234", device="NVIDIA H100 80GB HBM3", torch="2.11",
                triton="3.6.0", cuda="13.0", optimizer="adamw", dtype="float32", numel="124000000", tensors="148",
                ms_p20="1", ms_p80="1", copy_gbps="3000", peak_mem_mb="2000", first_step_s="0.5")  # fmt: skip
    return [
        dict(base, case="gpt2", contender="fusedlr-triton", ms_p50="2.0", gbps="1984", fraction_of_copy="0.66"),
        dict(base, case="gpt2", contender="torch-adamw-fused+clip", ms_p50="3.0", gbps="1322", fraction_of_copy="0.44"),
    ]


def test_readme_table_and_plot_come_from_the_rows(tmp_path):
    rows = [dict(_fake_gpu_rows()[0], device="CPU (x86_64, 2 cores)", commit="old")] + _fake_gpu_rows()
    run = bench_report.latest_run(rows)
    assert [r["contender"] for r in run] == ["fusedlr-triton", "torch-adamw-fused+clip"]
    table = bench_report.markdown_table(run)
    assert "NVIDIA H100 80GB HBM3" in table and "| gpt2 | adamw | torch-adamw-fused+clip | 3.000 |" in table
    assert "1.50x" in table
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{bench_report.README_START}\nold\n{bench_report.README_END}\nrest\n")
    bench_report.update_readme(readme, table, "benchmarks/results/latest_gpu.png")
    text = readme.read_text()
    assert "old" not in text and "1.50x" in text and text.endswith("rest\n")
    pytest.importorskip("matplotlib")
    png = tmp_path / "plot.png"
    bench_report.plot(run, png)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_bf16_rows_check_each_variant_against_an_fp32_run():
    """bf16: torch's fused AdamW on bf16 params, then fusedlr's master, master + bf16 states,
    stochastic-rounding, master + 8-bit states and split master + 8-bit states variants, each
    checked for drift from an fp32 run (a lost update fails)."""
    rows = bench.run(bench.parse_args(["--quick", "--dtype", "bfloat16", "--case", "gpt2_cpu", "--case",
                                       "many_small_cpu", "--no-record"]))  # fmt: skip
    assert [r["contender"] for r in rows] == [
        "torch-adamw-fused+clip",
        "fusedlr-torch-master",
        "fusedlr-torch-master+bf16-states",
        "fusedlr-torch-stochastic",
        "fusedlr-torch-master+int8-states",
        "fusedlr-torch-split+int8-states",
    ]  # fmt: skip  (many_small has no bf16 rows)
    assert {r["dtype"] for r in rows} == {"bfloat16"}


def test_bf16_drift_measures_lost_updates():
    start = [torch.zeros(1000)]
    reference = [torch.linspace(-1, 1, 1000)]
    assert bench._drift(reference, start, reference) == 0.0
    assert bench._drift(start, start, reference) == pytest.approx(-1.0)
