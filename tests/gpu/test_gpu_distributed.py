"""FSDP2 and tensor parallel on one GPU with NCCL (a world of one rank): both kernel backends
step the local shards with one all_reduce on the current stream, no host synchronisation, the
numbers of the torch backend, and the step can be captured in a CUDA graph. The multi-rank
semantics are tested on CPU with gloo (tests/test_distributed.py); on a machine with 2 GPUs
``torchrun --nproc_per_node=2 examples/train_fsdp.py`` runs them with NCCL."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
from torch import nn

import fusedlr

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def nccl_world():
    if not dist.is_nccl_available():
        pytest.skip("NCCL is not available")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl", rank=0, world_size=1, device_id=torch.device("cuda", 0))
    yield
    dist.destroy_process_group()


def _sharded_model():
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 33)).cuda()
    return fully_shard(model, mesh=init_device_mesh("cuda", (1,)))


def _run(backend, steps=5, sync_check=False):
    from torch.distributed.tensor.debug import CommDebugMode

    model = _sharded_model()
    opt = fusedlr.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, max_grad_norm=0.5, backend=backend,
                        schedule=fusedlr.schedules.WarmupCosine(warmup_steps=2, total_steps=10))  # fmt: skip
    generator = torch.Generator(device="cuda").manual_seed(1)
    norms, counts = [], []
    for _ in range(steps):
        x = torch.randn(32, 64, device="cuda", generator=generator)
        model(x).square().mean().backward()
        with CommDebugMode() as comm:
            if sync_check:
                torch.cuda.set_sync_debug_mode("error")
            try:
                opt.step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts.append(comm.get_total_counts())
        norms.append(opt.last_grad_norm.clone())
        opt.zero_grad()
    return model, norms, counts


def test_fsdp_step_matches_torch_backend(nccl_world, kernel_backend):
    ref_model, ref_norms, _ = _run("torch")
    model, norms, counts = _run(kernel_backend, sync_check=True)
    assert counts == [1] * len(counts)
    for (name, p), (_, q) in zip(model.named_parameters(), ref_model.named_parameters()):
        assert type(p).__name__ == "DTensor"
        torch.testing.assert_close(p.full_tensor(), q.full_tensor(), rtol=2e-5, atol=2e-6, msg=name)
    torch.testing.assert_close(torch.stack(norms), torch.stack(ref_norms), rtol=1e-6, atol=0)


def test_fsdp_step_captured_in_a_cuda_graph(nccl_world, kernel_backend):
    model = _sharded_model()
    opt = fusedlr.AdamW(model.parameters(), lr=1e-2, max_grad_norm=0.5, backend=kernel_backend)
    x = torch.randn(32, 64, device="cuda")
    model(x).square().mean().backward()
    opt.step()  # states and tables made eagerly first
    eager = {n: p.full_tensor().clone() for n, p in model.named_parameters()}
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream), torch.cuda.graph(graph):
        opt.step()
    torch.cuda.current_stream().wait_stream(stream)
    graph.replay()
    torch.cuda.synchronize()
    moved = any(not torch.equal(p.full_tensor(), eager[n]) for n, p in model.named_parameters())
    assert moved and torch.isfinite(opt.last_grad_norm)
