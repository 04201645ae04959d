"""fusedlr under torch's distributed engines, on CPU with gloo (tests/dist_worker.py runs the
scenarios in spawned processes): DDP, FSDP2, HSDP, tensor parallel, FSDP2 + TP and
pipeline-style stages with ``norm_group``, for AdamW and LION on the torch and triton backends,
each against an unsharded single-process torch.optim / lion-pytorch run."""

from __future__ import annotations

import json
import socket

import dist_worker
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from fusedlr import available_backends

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
BACKENDS = [b for b in ("torch", "triton") if b in available_backends()]
TWO_RANKS = ["ddp", "fsdp", "tp", "pipeline"]
FOUR_RANKS = ["hsdp", "fsdp_tp"]
# Collectives per opt.step(): DDP needs none (its grads are already the same everywhere); one
# all_reduce for the per-tensor sums of sharded params, or for the stages' total.
EXPECTED_COLLECTIVES = {"ddp": 0, "fsdp": 1, "tp": 1, "pipeline": 1, "hsdp": 1, "fsdp_tp": 1}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(tmp_path_factory, world, names):
    out = tmp_path_factory.mktemp(f"world{world}")
    mp.spawn(dist_worker.run, args=(world, _free_port(), str(out), names, BACKENDS), nprocs=world)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return {2: _spawn(tmp_path_factory, 2, TWO_RANKS), 4: _spawn(tmp_path_factory, 4, FOUR_RANKS)}


CASES = [(2, n) for n in TWO_RANKS] + [(4, n) for n in FOUR_RANKS]


@pytest.mark.parametrize("kind", ["adamw", "lion"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("world,scenario", CASES, ids=[n for _, n in CASES])
def test_matches_unsharded_reference(results, world, scenario, backend, kind):
    for rank, per_rank in enumerate(results[world]):
        result = per_rank[f"{scenario}-{kind}-{backend}"]
        assert "error" not in result, f"rank {rank}:\n{result.get('error')}"
        # fp32 params after 4 clipped steps; the norm's sums are float64 here, float32 in torch.
        assert result["param_err"] < 2e-6, result
        assert result["norm_err"] < 1e-6, result
        assert result["ranks_agree"], "norms or replicated params differ across ranks"
        assert result["collectives"] == [EXPECTED_COLLECTIVES[scenario]] * len(result["collectives"]), result
        if "states_are_dtensors" in result:
            assert result["states_are_dtensors"]
