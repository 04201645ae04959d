"""The kernels read nothing past the end of their tables and tensors. On a GPU such a read is an
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
    regions, moved_to_page_ends = [], set()  # kept alive: the tables live in them

    def at_page_end(table):
        pages = -(-max(table.numel() * table.element_size(), 1) // PAGE)
        region = mmap.mmap(-1, (pages + 1) * PAGE)
        start = ctypes.addressof(ctypes.c_char.from_buffer(region))
        assert libc.mprotect(ctypes.c_void_p(start + pages * PAGE), PAGE, 0) == 0  # PROT_NONE
        regions.append(region)
        words = torch.frombuffer(region, dtype=table.dtype, count=pages * PAGE // table.element_size())
        moved = words[words.numel() - table.numel():].view(table.shape)
        moved.copy_(table)
        moved_to_page_ends.add(moved.data_ptr())
        return moved

    build_plan, upload_hyper = _plan.build_plan, _plan.upload_hyper

    def guarded_plan(*args, **kwargs):
        plan = build_plan(*args, **kwargs)
        names = ("tensor_table", "chunk_table", "coef", "partial_grad", "partial_param")
        return dataclasses.replace(plan, **{name: at_page_end(getattr(plan, name)) for name in names})

    def guarded_upload(plan, values):
        upload_hyper(plan, values)
        if plan.hyper.data_ptr() not in moved_to_page_ends:
            plan.hyper = at_page_end(plan.hyper)

    _plan.build_plan, _plan.upload_hyper = guarded_plan, guarded_upload
    _plan.CHUNK_SIZE = 1024  # tensors of several chunks, as in the suite
    kind = sys.argv[1]
    torch.manual_seed(0)
    shapes = [(5,), (3, 4), (1,), (7, 9), (2,)]
    params = [torch.randn(s, requires_grad=True) for s in shapes]
    common = dict(max_grad_norm=1.0, backend="triton", schedule=schedules.WarmupCosine(2, 10))
    if kind == "adamw":
        groups = [dict(params=params[:2]), dict(params=params[2:], agc_clip_factor=0.05, weight_decay=0.1)]
        opt = fusedlr.AdamW(groups, lr=1e-2, amsgrad=True, agc_clip_factor=0.1, **common)
    elif kind == "adamw-lean":  # 8-bit moments (partial last blocks), split master, value clipping
        shapes = [(4096 + 5,), (3, 4), (8192 + 255,)]
        params = [torch.randn(s, dtype=torch.bfloat16, requires_grad=True) for s in shapes]
        opt = fusedlr.AdamW(params, lr=1e-2, state_dtype="int8", master_weights="split", clip_value=0.5, **common)
    elif kind == "bf16-stochastic":
        params = [p.detach().bfloat16().requires_grad_() for p in params]
        opt = fusedlr.AdamW(params, lr=1e-2, stochastic_rounding=True, **common)
    elif kind == "sgd":
        groups = [dict(params=params[:2], momentum=0.9, nesterov=True),
                  dict(params=params[2:], momentum=0.8, dampening=0.3, weight_decay=0.1)]
        opt = fusedlr.SGD(groups, lr=1e-2, **common)
    elif kind == "lion":
        params = [torch.randn(s, requires_grad=True) for s in [(4096 + 5,), (3, 4)]]
        opt = fusedlr.Lion(params, lr=1e-3, state_dtype="int8", **common)
    else:
        groups = [dict(params=params[:2]), dict(params=params[2:], warmup_steps=3, lr=2e-2)]
        opt = fusedlr.AdamWScheduleFree(groups, lr=1e-2, warmup_steps=2, max_grad_norm=1.0, backend="triton")
        opt.train()
        opt._group_sums = at_page_end(opt._group_sums)
    for step in range(3):
        for p in params:
            p.grad = torch.randn_like(p)
        if step == 1:  # every state and grad at a page end too; the plan is rebuilt for them
            for p in params:
                for name, value in list(opt.state[p].items()):
                    if isinstance(value, torch.Tensor) and value.numel():
                        opt.state[p][name] = at_page_end(value)
                p.grad = at_page_end(p.grad)
            opt._plan_cache = opt._step_cache = None
        opt.step()
    used = set(opt._plan_cache.tensor_table.flatten().tolist())
    print("stepped", float(opt.last_grad_norm), "guarded addresses in the plan:", len(used & moved_to_page_ends))
    """
)


@pytest.mark.parametrize("kind", ["adamw", "adamw-lean", "bf16-stochastic", "sgd", "lion", "schedulefree"])
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
    assert int(result.stdout.split()[-1]) > 0  # the states and grads the kernels read were the guarded ones
