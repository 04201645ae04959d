"""``opt.step()`` in a ``torch.compile``d CUDA training step (inductor): one op in the graph, no
recompilation on a new lr, the same numbers as eager. Skipped without a GPU."""

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import fusedlr
from fusedlr import schedules

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("options", [{}, dict(master_weights=True)], ids=["fp32", "bf16-master"])
def test_compiled_cuda_training_step_matches_eager(kernel_backend, options):
    torch._dynamo.reset()
    dtype = torch.bfloat16 if options else torch.float32
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 8)).cuda().to(dtype)
    twin = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 8)).cuda().to(dtype)
    twin.load_state_dict(model.state_dict())

    def make(net):
        return fusedlr.AdamW(net.parameters(), lr=1e-3, max_grad_norm=1.0, schedule=schedules.WarmupCosine(2, 10),
                             backend=kernel_backend, **options)  # fmt: skip

    opt, twin_opt = make(model), make(twin)
    data = [(torch.randn(32, 64, device="cuda", dtype=dtype), torch.randn(32, 8, device="cuda", dtype=dtype))
            for _ in range(8)]  # fmt: skip

    def loss_and_grads(net, x, y):
        loss = torch.nn.functional.mse_loss(net(x).float(), y.float())
        loss.backward()
        return loss.detach()

    def train_step(net, optimizer, x, y):
        loss = loss_and_grads(net, x, y)
        optimizer.step()
        optimizer.zero_grad()
        return loss

    def twin_step(net, optimizer, x, y):
        # The model's forward and backward compiled alike (inductor fuses and rounds them its own
        # way, not as eager does), the optimizer step eager: only the step differs between the two.
        loss = twin_grads(net, x, y)
        optimizer.step()
        optimizer.zero_grad()
        return loss

    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(train_step, backend=counter)
    twin_grads = torch.compile(loss_and_grads)
    for i, (x, y) in enumerate(data):
        for o in (opt, twin_opt):
            o.param_groups[0]["lr"] = 1e-3 / (i + 1)
        torch.testing.assert_close(compiled(model, opt, x, y), twin_step(twin, twin_opt, x, y), rtol=0, atol=0)
    frames = counter.frame_count
    compiled(model, opt, *data[0])  # another lr, another step: nothing new to compile
    assert counter.frame_count == frames
    twin_step(twin, twin_opt, *data[0])
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
