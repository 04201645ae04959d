"""bf16 training on the GPU: both kernel backends against the torch backend for master weights,
stochastic rounding and bf16 states; a small GPT-style model trained in bf16 tracking the
fp32-master reference loss curve; CUDA-graph replays of a mixed-precision step. Skipped
without a GPU."""

import pytest
import torch
from helpers import assert_same_storage, capture_step, make_grads, make_params, run_steps

import fusedlr
from fusedlr import schedules

pytestmark = pytest.mark.gpu
CUDA = "cuda"
SHAPES = [(1,), (4097,), (3, 5, 7), (70_000,), (300, 257)] + [(64,)] * 20
OPTIONS = {
    "master": dict(master_weights=True),
    "master-fp32-main-grad": dict(master_weights=True, grad_attribute="main_grad"),
    "master-bf16-states": dict(master_weights=True, state_dtype=torch.bfloat16),
    "stochastic": dict(stochastic_rounding=True, seed=3),
    "bf16-states": dict(state_dtype=torch.bfloat16),
}


def _bf16(base):
    return [p.detach().to(torch.bfloat16).requires_grad_() for p in base]


@pytest.mark.parametrize("kind", ["adamw", "lion"])
@pytest.mark.parametrize("option", list(OPTIONS))
def test_kernel_backends_match_the_torch_backend_on_cuda(kernel_backend, kind, option):
    base = make_params(SHAPES, dtype=torch.float64, device=CUDA)
    options = OPTIONS[option]
    grad_dtype = torch.float32 if options.get("grad_attribute") else torch.bfloat16
    grads = [[g.to(grad_dtype) for g in step] for step in make_grads(base, 8, scale=2.0)]
    results = []
    for backend in ("torch", kernel_backend):
        params = _bf16(base)
        cls = fusedlr.AdamW if kind == "adamw" else fusedlr.Lion
        opt = cls(params, lr=1e-2, weight_decay=0.1, max_grad_norm=1.0, schedule=schedules.WarmupCosine(2, 8),
                  backend=backend, **options)  # fmt: skip
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                setattr(p, options.get("grad_attribute", "grad"), g.clone())
            opt.step()
        results.append((params, opt))
    (theirs, ref), (ours, opt) = results
    for p, q in zip(ours, theirs):
        assert_same_storage(p.detach(), q.detach(), atol=1e-2 * 2**-6)
        for name, value in ref.state[q].items():
            assert_same_storage(opt.state[p][name], value)


class TinyGPT(torch.nn.Module):
    def __init__(self, vocab=64, width=64, layers=2, context=32):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        self.position = torch.nn.Parameter(torch.randn(context, width) * 0.02)
        layer = torch.nn.TransformerEncoderLayer(width, 4, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = torch.nn.Linear(width, vocab)
        self.register_buffer("mask", torch.nn.Transformer.generate_square_subsequent_mask(context), persistent=False)

    def forward(self, tokens):
        x = self.embed(tokens) + self.position[: tokens.shape[1]]
        return self.head(self.blocks(x, mask=self.mask.to(x.dtype), is_causal=True))


def _batches(steps, batch=32, context=33, vocab=64):
    """Sequences that follow t -> (5t + 3) mod vocab, with 10% random tokens: learnable."""
    gen = torch.Generator(device=CUDA).manual_seed(0)
    for _ in range(steps):
        start = torch.randint(vocab, (batch, 1), generator=gen, device=CUDA)
        seq = start.repeat(1, context)
        for i in range(1, context):
            seq[:, i] = (5 * seq[:, i - 1] + 3) % vocab
        noise = torch.rand(seq.shape, generator=gen, device=CUDA) < 0.1
        seq = torch.where(noise, torch.randint(vocab, seq.shape, generator=gen, device=CUDA), seq)
        yield seq[:, :-1], seq[:, 1:]


def _train(make_step, steps=300):
    torch.manual_seed(0)
    model = TinyGPT().to(CUDA).to(torch.bfloat16)
    step = make_step(model)
    losses = []
    for inputs, targets in _batches(steps):
        logits = model(inputs)
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        model.zero_grad(set_to_none=True)
        loss.backward()
        step()
        losses.append(loss.detach())
    return torch.stack(losses).float().cpu()


SCHEDULE = schedules.WarmupCosine(20, 300, min_lr_ratio=0.1)


def _fp32_master_reference(model):
    """What users write by hand: torch AdamW on fp32 copies, bf16 grads cast up, clip, copy back."""
    params = list(model.parameters())
    masters = [p.detach().float().requires_grad_() for p in params]
    opt = torch.optim.AdamW(masters, lr=3e-3, weight_decay=0.1, foreach=False)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, SCHEDULE)

    def step():
        for p, m in zip(params, masters):
            m.grad = p.grad.float()
        torch.nn.utils.clip_grad_norm_(masters, 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            for p, m in zip(params, masters):
                p.copy_(m)

    return step


def _fusedlr(**options):
    def make(model):
        opt = fusedlr.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1, max_grad_norm=1.0, schedule=SCHEDULE,
                            **options)  # fmt: skip
        return opt.step

    return make


def test_bf16_gpt_training_tracks_the_fp32_master_reference():
    """300 steps of a 2-layer GPT in bf16: with master weights fusedlr follows the hand-written
    fp32-master loop step for step; with stochastic rounding (no master) it ends where the
    reference ends; plain bf16 round-to-nearest, for scale, is printed."""
    reference = _train(_fp32_master_reference)
    master = _train(_fusedlr(master_weights=True))
    stochastic = _train(_fusedlr(stochastic_rounding=True))
    nearest = _train(_fusedlr())
    tail = slice(-50, None)
    print(f"\nfinal 50-step mean loss: reference {reference[tail].mean():.4f}, master {master[tail].mean():.4f}, "
          f"stochastic {stochastic[tail].mean():.4f}, round-to-nearest {nearest[tail].mean():.4f}")  # fmt: skip
    assert reference[tail].mean() < 0.6 * reference[:10].mean()  # it learns
    assert ((master - reference).abs() / reference).mean() < 0.01
    assert abs(stochastic[tail].mean() - reference[tail].mean()) < 0.05 * reference[tail].mean()


@pytest.mark.parametrize("option", ["master", "stochastic"])
def test_cuda_graph_replays_of_mixed_precision_steps_match_eager(option):
    base = make_params(SHAPES, dtype=torch.float64, device=CUDA)
    grads = [[g.to(torch.bfloat16) for g in step] for step in make_grads(base, 10, scale=3.0)]
    grads[4][1] = grads[4][1].clone().fill_(float("inf"))  # a skipped step inside the replays

    def make(params):
        return fusedlr.AdamW(params, lr=1e-2, max_grad_norm=1.0, schedule=schedules.WarmupCosine(2, 10),
                             skip_nonfinite=True, **OPTIONS[option])  # fmt: skip

    eager = _bf16(base)
    eager_opt = make(eager)
    run_steps(eager_opt, eager, grads)

    graphed = _bf16(base)
    opt = make(graphed)
    for p, g in zip(graphed, grads[0]):
        p.grad = g.clone()
    graph = capture_step(opt)  # after an eager warm-up step: step 0
    for step_grads in grads[1:]:
        for p, g in zip(graphed, step_grads):
            p.grad.copy_(g)
        graph.replay()
    torch.cuda.synchronize()
    assert int(opt.skipped_steps) == 1 == int(eager_opt.skipped_steps)
    for p, q in zip(graphed, eager):
        assert torch.equal(p.detach(), q.detach())
        for name, value in eager_opt.state[q].items():
            assert torch.equal(opt.state[p][name], value), name
