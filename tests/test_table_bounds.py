"""The kernels read no entry past the end of their device tables. On a GPU such a read is an
illegal address whenever the table ends a mapped region (H100, 2026-11-23: the finalize read the
step column for all 1,024 lanes of its vector, compute-sanitizer caught it, and the fault took
down every later CUDA call of the process). Here the Triton interpreter reads host memory
directly, so each table is moved to the end of a page followed by an inaccessible page: a read
past its end kills the process. Each case runs in a child process for that reason."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("triton_backend")

_CHILD = textwrap.dedent(
    """
    import ctypes, dataclasses, mmap, sys
    import torch
    import fusedlr
    from fusedlr import _plan, schedules

    PAGE = mmap.PAGESIZE
    libc = ctypes.CDLL(None)
    regions = []  # kept alive: the tables live in them

    def at_page_end(table):
        pages = -(-table.numel() * table.element_size() // PAGE)
        region = mmap.mmap(-1, (pages + 1) * PAGE)
        start = ctypes.addressof(ctypes.c_char.from_buffer(region))
        assert libc.mprotect(ctypes.c_void_p(start + pages * PAGE), PAGE, 0) == 0  # PROT_NONE
        regions.append(region)
        words = torch.frombuffer(region, dtype=table.dtype, count=pages * PAGE // table.element_size())
        moved = words[words.numel() - table.numel():].view(table.shape)
        moved.copy_(table)
        return moved

    build_plan = _plan.build_plan

    def guarded_plan(*args, **kwargs):
        plan = build_plan(*args, **kwargs)
        return dataclasses.replace(plan, tensor_table=at_page_end(plan.tensor_table),
                                   chunk_table=at_page_end(plan.chunk_table))

    _plan.build_plan = guarded_plan
    kind = sys.argv[1]
    torch.manual_seed(0)
    params = [torch.randn(s, requires_grad=True) for s in [(5,), (3, 4), (1,)]]
    common = dict(max_grad_norm=1.0, backend="triton", schedule=schedules.WarmupCosine(2, 10))
    if kind == "adamw":
        opt = fusedlr.AdamW(params, lr=1e-2, agc_clip_factor=0.1, amsgrad=True, **common)
    elif kind == "adamw-lean":  # 8-bit moments (a tensor big enough), split master, value clipping
        params = [torch.randn(s, dtype=torch.bfloat16, requires_grad=True) for s in [(4096 + 5,), (3, 4)]]
        opt = fusedlr.AdamW(params, lr=1e-2, state_dtype="int8", master_weights="split", clip_value=0.5, **common)
    elif kind == "sgd":
        opt = fusedlr.SGD(params, lr=1e-2, momentum=0.9, **common)
    elif kind == "lion":
        opt = fusedlr.Lion(params, lr=1e-3, **common)
    else:
        opt = fusedlr.AdamWScheduleFree(params, lr=1e-2, warmup_steps=2, max_grad_norm=1.0, backend="triton")
        opt.train()
    for _ in range(2):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    print("stepped", float(opt.last_grad_norm))
    """
)


@pytest.mark.parametrize("kind", ["adamw", "adamw-lean", "sgd", "lion", "schedulefree"])
def test_kernels_read_nothing_past_their_tables(kind, tmp_path):
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    root = Path(__file__).parent.parent
    env = dict(
        os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])
    )
    result = subprocess.run([sys.executable, str(script), kind], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, f"exit {result.returncode}:\n{result.stdout}\n{result.stderr[-3000:]}"
    assert "stepped" in result.stdout
