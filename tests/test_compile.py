"""``opt.step()`` inside ``torch.compile``: one custom op (``fusedlr::step``) in the graph, no
graph break (``fullgraph=True``), no recompilation when the lr changes, the same numbers as
eager steps. The CPU backends run here; tests/gpu runs the same on CUDA."""

import pytest
import torch
from helpers import clone_params, make_grads, make_params
from torch._dynamo.testing import CompileCounterWithBackend

import fusedlr
from fusedlr import schedules


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _make(params, backend):
    return fusedlr.AdamW(params, lr=1e-2, weight_decay=0.1, max_grad_norm=1.0,
                         schedule=schedules.WarmupCosine(2, 8), backend=backend)  # fmt: skip


def test_compiled_step_is_one_graph_and_a_new_lr_never_recompiles(backend):
    base = make_params([(33,), (4, 5)])
    grads = make_grads(base, 6)
    eager = clone_params(base)
    eager_opt = _make(eager, backend)
    ours = clone_params(base)
    opt = _make(ours, backend)
    counter = CompileCounterWithBackend("aot_eager")
    compiled_step = torch.compile(opt.step, backend=counter, fullgraph=True)
    for i, step_grads in enumerate(grads):
        for group in (opt.param_groups[0], eager_opt.param_groups[0]):
            group["lr"] = 1e-2 / (i + 1)  # what a torch LR scheduler does between steps
        for p, q, g in zip(ours, eager, step_grads):
            p.grad, q.grad = g.clone(), g.clone()
        compiled_step()
        eager_opt.step()
    assert counter.frame_count == 1
    assert any("fusedlr.step" in str(node.target) for graph in counter.graphs for node in graph.graph.nodes)
    for p, q in zip(ours, eager):
        assert torch.equal(p.detach(), q.detach())
    assert int(opt.state_dict()["schedule_step"]) == 6


def test_compiled_training_step_matches_eager(backend):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 1))
    twin = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 1))
    twin.load_state_dict(model.state_dict())
    opt, twin_opt = _make(list(model.parameters()), backend), _make(list(twin.parameters()), backend)
    data = [(torch.randn(32, 8), torch.randn(32, 1)) for _ in range(5)]

    def train_step(net, optimizer, x, y):
        loss = torch.nn.functional.mse_loss(net(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return loss.detach()

    compiled = torch.compile(train_step, backend="aot_eager")
    losses = [compiled(model, opt, x, y) for x, y in data]
    twin_losses = [train_step(twin, twin_opt, x, y) for x, y in data]
    torch.testing.assert_close(torch.stack(losses), torch.stack(twin_losses), rtol=1e-6, atol=1e-7)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_compiled_step_with_main_grads_reads_them(backend):
    params = [torch.zeros(5, dtype=torch.bfloat16, requires_grad=True)]
    opt = fusedlr.AdamW(params, lr=0.1, master_weights=True, grad_attribute="main_grad", backend=backend)
    params[0].main_grad = torch.ones(5)
    torch.compile(opt.step, backend="aot_eager", fullgraph=True)()
    assert float(opt.state[params[0]]["step"]) == 1.0


def test_inductor_compiled_step_matches_eager():
    """Inductor re-inplaces the op: it is handed the params themselves."""
    base = make_params([(64,), (3, 7)])
    grads = make_grads(base, 3)
    ours, eager = clone_params(base), clone_params(base)
    opt, eager_opt = _make(ours, "torch"), _make(eager, "torch")
    compiled_step = torch.compile(opt.step, fullgraph=True)
    for i, step_grads in enumerate(grads):
        for group in (opt.param_groups[0], eager_opt.param_groups[0]):
            group["lr"] = 1e-2 / (i + 1)
        for p, q, g in zip(ours, eager, step_grads):
            p.grad, q.grad = g.clone(), g.clone()
        compiled_step()
        eager_opt.step()
    for p, q in zip(ours, eager):
        assert torch.equal(p.detach(), q.detach())
