"""A small GPT-style model trained in bf16 four ways, for the tests that judge bf16 training:
the hand-written fp32-master loop users write today (torch AdamW on fp32 copies), fusedlr with
master weights, fusedlr with stochastic rounding, and fusedlr rounding to nearest."""

import torch

import fusedlr
from fusedlr import schedules


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


def batches(steps, device, batch=32, context=33, vocab=64, seed=0):
    """Sequences that follow t -> (5t + 3) mod vocab, with 10% random tokens: learnable."""
    gen = torch.Generator(device=device).manual_seed(seed)
    for _ in range(steps):
        start = torch.randint(vocab, (batch, 1), generator=gen, device=device)
        seq = start.repeat(1, context)
        for i in range(1, context):
            seq[:, i] = (5 * seq[:, i - 1] + 3) % vocab
        noise = torch.rand(seq.shape, generator=gen, device=device) < 0.1
        seq = torch.where(noise, torch.randint(vocab, seq.shape, generator=gen, device=device), seq)
        yield seq[:, :-1], seq[:, 1:]


def train(make_step, device, steps, width=64, seed=0):
    """Per-step losses; ``seed`` picks the initial weights and the data order."""
    torch.manual_seed(seed)
    model = TinyGPT(width=width).to(device).to(torch.bfloat16)
    step = make_step(model, steps)
    losses = []
    for inputs, targets in batches(steps, device, seed=seed):
        logits = model(inputs)
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        model.zero_grad(set_to_none=True)
        loss.backward()
        step()
        losses.append(loss.detach())
    return torch.stack(losses).float().cpu()


def _schedule(steps):
    return schedules.WarmupCosine(steps // 15, steps, min_lr_ratio=0.1)


def fp32_master_reference(model, steps):
    """What users write by hand: torch AdamW on fp32 copies, bf16 grads cast up, clip, copy back."""
    return fp32_master_loop(lambda masters: torch.optim.AdamW(masters, lr=3e-3, weight_decay=0.1, foreach=False))(
        model, steps
    )


def fp32_master_loop(make_optimizer):
    """The hand-written fp32-master loop around any torch.optim-style optimizer (bitsandbytes'
    and torchao's 8-bit AdamW, for the quality comparison)."""
    return lambda model, steps: _master_loop(model, steps, make_optimizer)


def _master_loop(model, steps, make_optimizer):
    params = list(model.parameters())
    masters = [p.detach().float().requires_grad_() for p in params]
    opt = make_optimizer(masters)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(steps))

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


def with_fusedlr(**options):
    def make(model, steps):
        opt = fusedlr.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1, max_grad_norm=1.0,
                            schedule=_schedule(steps), **options)  # fmt: skip
        return opt.step

    return make


def train_all(device, steps, width=64, backend="auto"):
    return {
        "reference": train(fp32_master_reference, device, steps, width),
        "master": train(with_fusedlr(master_weights=True, backend=backend), device, steps, width),
        "stochastic": train(with_fusedlr(stochastic_rounding=True, backend=backend), device, steps, width),
        "nearest": train(with_fusedlr(backend=backend), device, steps, width),
    }


def check_tracking(losses):
    """Master weights follow the reference step for step (1% mean relative gap); stochastic
    rounding ends where the reference ends (5% over the last 50 steps); the model learns."""
    reference, master, stochastic = losses["reference"], losses["master"], losses["stochastic"]
    tail = slice(-50, None)
    print("\nfinal 50-step mean loss: " + ", ".join(f"{k} {v[tail].mean():.4f}" for k, v in losses.items()))
    assert reference[tail].mean() < 0.6 * reference[:10].mean()
    assert ((master - reference).abs() / reference).mean() < 0.01
    assert abs(stochastic[tail].mean() - reference[tail].mean()) < 0.05 * reference[tail].mean()
