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
    assert names[:2] == ["fusedlr-torch", "fusedlr-cpu"] and "torch-adamw-fused+clip" in names
    with out.open() as f:
        recorded = list(csv.DictReader(f))
    assert [r["contender"] for r in recorded] == names
    assert all(r["device"].startswith("CPU") and float(r["ms_p50"]) > 0 for r in recorded)


def test_lion_baseline_is_lion_pytorch():
    rows = bench.run(bench.parse_args(["--quick", "--optimizer", "lion", "--case", "gpt2_cpu", "--no-record"]))
    assert [r["contender"] for r in rows] == ["fusedlr-torch", "fusedlr-cpu", "lion-pytorch+clip"]


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


def test_plot_sets_fusedlr_baselines_and_reference_apart(tmp_path):
    """Fraction of copy per case, fusedlr's fused backends first, the torch reference last and
    marked, bf16 in its own row, memory per bf16 case with bytes per parameter."""
    rows = _fake_gpu_rows()
    rows.insert(0, dict(rows[0], contender="fusedlr-torch", ms_p50="20.0", fraction_of_copy="0.07"))
    rows += [dict(r, dtype="bfloat16", peak_mem_mb="1000") for r in rows]
    layout = bench_report.plot_layout(bench_report.latest_run(rows))
    ((panel, bars),) = layout["speed"]
    assert panel == ("gpt2", "adamw", "float32")
    assert [(c, role) for c, role, _, _ in bars] == [
        ("fusedlr-triton", "fusedlr"),
        ("torch-adamw-fused+clip", "baseline"),
        ("fusedlr-torch", "reference"),
    ]
    assert [fraction for _, _, fraction, _ in bars] == [0.66, 0.44, 0.07]
    ((bf16_panel, _),) = layout["bf16"]
    assert bf16_panel == ("gpt2", "adamw", "bfloat16")
    ((memory_panel, memory),) = layout["memory"]
    assert memory_panel == bf16_panel
    assert memory[0][2] == 1000.0 and abs(memory[0][3] - 1000 * 2**20 / 124_000_000) < 1e-9
    pytest.importorskip("matplotlib")
    png = tmp_path / "plot.png"
    bench_report.plot(bench_report.latest_run(rows), png)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_bf16_rows_check_each_variant_against_an_fp32_run():
    """bf16: torch's fused AdamW and bitsandbytes' AdamW8bit on bf16 params (FlashOptim and
    torchao join them on a GPU), then fusedlr's master, master + bf16 states, stochastic-rounding,
    master + 8-bit states and split master + 8-bit states variants, each checked for drift from
    an fp32 run (a lost update fails)."""
    rows = bench.run(bench.parse_args(["--quick", "--dtype", "bfloat16", "--case", "gpt2_cpu", "--case",
                                       "many_small_cpu", "--no-record"]))  # fmt: skip
    assert [r["contender"] for r in rows] == [
        "torch-adamw-fused+clip",
        "bitsandbytes-adamw8bit+clip",
        "fusedlr-cpu-master",
        "fusedlr-cpu-master+bf16-states",
        "fusedlr-cpu-stochastic",
        "fusedlr-cpu-master+int8-states",
        "fusedlr-cpu-split+int8-states",
    ]  # fmt: skip  (many_small has no bf16 rows)
    assert {r["dtype"] for r in rows} == {"bfloat16"}
    cuda_names = [c.name for c in bench.contenders("adamw", torch.device("cuda"), None, torch.bfloat16)]
    assert cuda_names[:4] == ["torch-adamw-fused+clip", "flashoptim-adamw-24bit+clip", "bitsandbytes-adamw8bit+clip",
                              "torchao-adamw8bit+clip"]  # fmt: skip


def test_bf16_drift_measures_lost_updates():
    start = [torch.zeros(1000)]
    reference = [torch.linspace(-1, 1, 1000)]
    assert bench._drift(reference, start, reference) == 0.0
    assert bench._drift(start, start, reference) == pytest.approx(-1.0)


def test_cpu_rows_make_the_readmes_cpu_table(tmp_path):
    """CPU rows go to their own README section, labelled as CPU figures; --threads runs stay out of it."""
    gpu = _fake_gpu_rows()
    cpu = [dict(r, device="CPU (x86_64, 2 cores)", commit="new", contender=r["contender"].replace("triton", "cpu"))
           for r in gpu]  # fmt: skip
    one_thread = [dict(r, device="CPU (x86_64, 2 cores, 1 thread)", ms_p50="9.0") for r in cpu]
    rows = gpu + cpu + one_thread
    assert bench_report.latest_run(rows) == gpu
    run = bench_report.latest_run(rows, cpu=True)
    assert run == cpu
    table = bench_report.markdown_table(run)
    assert table.startswith("CPU figures: CPU (x86_64, 2 cores), torch 2.11, fusedlr new")
    assert "| fusedlr-cpu |" in table
    readme = tmp_path / "README.md"
    readme.write_text(f"{bench_report.README_START}\ngpu\n{bench_report.README_END}\n"
                      f"{bench_report.CPU_README_START}\nold\n{bench_report.CPU_README_END}\n")  # fmt: skip
    bench_report.update_readme(readme, table, None, cpu=True)
    text = readme.read_text()
    assert "gpu" in text and "old" not in text and "| fusedlr-cpu |" in text
