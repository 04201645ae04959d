"""The CUDA extension's kernels (csrc/kernels.cu) compiled to PTX for sm_90 with nvcc, here,
without a GPU; and the PTX shows what the design promises: every rule and storage variant the
launcher (fusedlr/_cuda.py) dispatches is instantiated, no atomics (reproducible reductions), no
approximate division or square root, 16-byte accesses in the vectorised updates, and the 8-bit
update done by warps alone (shuffles, no barrier, no shared or local memory). Skipped where no
nvcc is found (a failure when FUSEDLR_EXPECT_EXTENSION=1 says the extension was built)."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RULES = ("AdamW", "Lion", "Sgd", "ScheduleFree")


def _nvcc():
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return str(Path(root) / "bin" / "nvcc")
    return shutil.which("nvcc")


@pytest.fixture(scope="module")
def entries(tmp_path_factory):
    """{kernel entry name: its PTX body}."""
    nvcc = _nvcc()
    if nvcc is None:
        if os.environ.get("FUSEDLR_EXPECT_EXTENSION") == "1":
            pytest.fail("FUSEDLR_EXPECT_EXTENSION=1 but nvcc is not found")
        pytest.skip("no nvcc here")
    out = tmp_path_factory.mktemp("ptx") / "kernels.ptx"
    subprocess.run([nvcc, "-std=c++17", "-O3", "-arch=sm_90", "-ptx", f"-I{ROOT / 'csrc'}",
                    str(ROOT / "csrc" / "kernels.cu"), "-o", str(out)], check=True)  # fmt: skip
    # Entries and the device functions after them, each cut at the next header.
    bodies = re.split(r"^(?=(?:\.visible |\.weak )?\.(?:entry|func)\b)", out.read_text(), flags=re.M)
    found = {}
    for body in bodies:
        match = re.match(r"(?:\.visible |\.weak )?\.entry (\S+)\(", body)
        if match:
            found[match.group(1)] = body
    return found


def _named(entries, kernel):
    return {name: body for name, body in entries.items() if kernel in name}


def test_every_rule_and_storage_is_instantiated(entries):
    updates, mixed = _named(entries, "13update_kernel"), _named(entries, "mixed_update_kernel")
    quantized = _named(entries, "quantized_update_kernel")
    for rule in RULES:
        assert sum(rule in name for name in updates) == 4, rule  # fp32, fp64, fp16, bf16
        assert sum(rule in name for name in mixed) == 12, rule  # the mixed storage combinations
    # 8-bit moments: AdamW and LION over fp32/bf16/fp16 params with their own or fp32 grads.
    assert len(quantized) == 10 and all("AdamW" in name or "Lion" in name for name in quantized)
    assert _named(entries, "finalize_kernel")


def test_no_atomics_and_no_approximate_arithmetic(entries):
    for name, body in entries.items():
        assert not re.search(r"\b(atom|red)\.", body), f"{name}: atomics make the reduction order vary"
        assert not re.search(r"\b(div\.full|div\.approx|sqrt\.approx|rsqrt\.approx)", body), name


def test_updates_with_a_second_moment_use_ieee_division_and_square_root(entries):
    for name, body in _named(entries, "update_kernel").items():
        if "AdamW" in name or "ScheduleFree" in name:
            assert re.search(r"\bsqrt\.rn\.f(32|64)", body) and re.search(r"\bdiv\.rn\.f(32|64)", body), name


def test_vectorised_updates_move_16_bytes_per_access(entries):
    """(Generic addressing: the addresses come from the tables, so the state space is unknown.)"""
    for name, body in _named(entries, "13update_kernel").items():
        assert re.search(r"\bld(?:\.global)?(?:\.\w+)*\.v[24]\.(?:b|u|f|s)(?:16|32|64)", body), name
        assert re.search(r"\bst(?:\.global)?(?:\.\w+)*\.v[24]\.(?:b|u|f|s)(?:16|32|64)", body), name


def test_the_8bit_update_is_warp_local(entries):
    """One warp per quantisation block: the block maxima by shuffles (5 rounds per maximum),
    no barrier, no shared memory, the moments held in registers (no local memory); the
    quantisation's products and sums rounded apart (mul.rn / add.rn, never contracted)."""
    for name, body in _named(entries, "quantized_update_kernel").items():
        rounds = len(re.findall(r"\bshfl\.sync\.bfly", body))
        assert rounds == (10 if "AdamW" in name else 5), name
        assert not re.search(r"\bbar\.sync|\bbarrier\.|\.shared\b|\.local\b", body), name
        assert re.search(r"\bmul\.rn\.f32", body) and re.search(r"\badd\.rn\.f32", body), name
