"""Training quality of 8-bit moments + split master weights (7 bytes per bf16 param) against the
fp32-master loop users write by hand (16), on the small GPT of tests/tiny_gpt.py, bf16 on the
CPU. The default test is short; the long comparison, with bitsandbytes and torchao where they
install, is marked slow (README, "Memory-lean state": the recorded table and its command)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import quality_8bit  # noqa: E402

REFERENCE = "fp32-master (torch AdamW)"


def test_int8_moments_and_split_master_track_the_fp32_master_run():
    losses = quality_8bit.run(60, 64, names={REFERENCE, "fusedlr int8 + split"}, backend="torch")
    reference, lean = losses[REFERENCE], losses["fusedlr int8 + split"]
    assert reference[-20:].mean() < 0.6 * reference[:10].mean()  # it learns
    # Step for step within 1% (mean relative gap), and the same final loss within 1%.
    assert ((lean - reference).abs() / reference).mean() < 0.01
    assert abs(lean[-20:].mean() / reference[-20:].mean() - 1) < 0.01


@pytest.mark.slow
def test_long_run_every_contender_ends_within_one_percent_of_fp32():
    rows = quality_8bit.summary(quality_8bit.run(400, 64))
    print("\n" + "\n".join(f"{name}: last-50 loss {last:.4f} ({gap:+.2%})" for name, _, last, gap in rows))
    for name, first, last, gap in rows:
        assert last < 0.6 * first, name
        assert abs(gap) < 0.01, name
