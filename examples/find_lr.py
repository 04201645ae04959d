"""The learning-rate toolkit on a small transformer, on the CPU in well under a minute:

    python examples/find_lr.py [--plot docs/lr_range_test.png] [--device cuda]

1. ``fusedlr.param_groups``: no weight decay for biases and norms, layer-wise lr decay; prints
   the group table.
2. ``fusedlr.find_lr``: an LR range test with dict batches (Hugging Face style: the model
   returns its loss from ``labels``), run by fusedlr.AdamW's own device schedule; prints the
   suggestions, checks that the model and optimizer are exactly as before, saves the plot.
3. Trains with the suggested lr (value clipping and norm clipping fused in the step) and prints
   the loss.
"""

import argparse
import time

import torch
from torch import nn

import fusedlr
from fusedlr import schedules

VOCAB, CONTEXT = 32, 16


class TinyLM(nn.Module):
    """A causal transformer whose forward takes ``input_ids`` and ``labels`` and returns a dict
    with ``loss``, as Hugging Face models do."""

    def __init__(self, width=32, layers=3):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, width)
        self.pos_embed = nn.Parameter(torch.randn(CONTEXT, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, 4, 4 * width, dropout=0.1, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, VOCAB)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(CONTEXT), persistent=False)

    def forward(self, input_ids, labels):
        x = self.embed(input_ids) + self.pos_embed[: input_ids.shape[1]]
        logits = self.head(self.norm(self.blocks(x, mask=self.mask, is_causal=True)))
        return {"loss": nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten()), "logits": logits}


def dataset(batches, seed=0, batch=16):
    """Sequences following t -> (5t + 3) mod VOCAB with 10% random tokens: learnable, not trivial."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batches):
        tokens = [torch.randint(VOCAB, (batch, 1), generator=gen)]
        for _ in range(CONTEXT):
            nxt = (5 * tokens[-1] + 3) % VOCAB
            noise = torch.rand(batch, 1, generator=gen) < 0.1
            tokens.append(torch.where(noise, torch.randint(VOCAB, (batch, 1), generator=gen), nxt))
        seq = torch.cat(tokens, dim=1)
        out.append({"input_ids": seq[:, :-1], "labels": seq[:, 1:]})
    return out


def snapshot(model, opt):
    return [t.clone() for t in model.state_dict().values()], repr(opt.state_dict()["param_groups"])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--plot", default=None, help="save the range-test curve here (PNG; needs matplotlib)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=80, help="range-test updates")
    args = parser.parse_args()
    started = time.perf_counter()
    torch.manual_seed(0)
    model = TinyLM().to(args.device)
    data = dataset(20)

    groups = fusedlr.param_groups(model, lr=1e-3, weight_decay=0.1, layer_decay=0.8)
    print(groups, end="\n\n")
    schedule = schedules.WarmupCosine(warmup_steps=10, total_steps=100, min_lr_ratio=0.1)
    opt = fusedlr.AdamW(groups, betas=(0.9, 0.95), max_grad_norm=1.0, clip_value=1.0, schedule=schedule)

    before = snapshot(model, opt)
    # A short sweep: beta 0.9 (fastai's and Lightning's 0.98 averages ~50 updates, which on 80
    # updates over 5 decades would lag the raw curve by about 3 decades).
    result = fusedlr.find_lr(model, opt, data, start_lr=1e-5, end_lr=1.0, num_steps=args.steps, beta=0.9,
                             progress=False)  # fmt: skip
    after = snapshot(model, opt)
    unchanged = all(torch.equal(a, b) for a, b in zip(before[0], after[0])) and before[1] == after[1]
    print(result)
    print(f"model and optimizer exactly as before the test: {unchanged} (schedule counter {int(opt._schedule_step)})")
    if args.plot:
        result.plot(args.plot)
        print(f"plot: {args.plot}")

    lr = result.suggestion
    if lr is None:  # fewer than 10 usable points (find_lr warned): the curve is noise
        print("no suggestion: run more --steps")
        return
    print(f"\ntraining 100 updates with the suggested lr {lr:.3g} (rule {result.rule!r}), layer decay 0.8:")
    for group, fresh in zip(opt.param_groups, fusedlr.param_groups(model, lr=lr, weight_decay=0.1, layer_decay=0.8)):
        group["lr"] = fresh["lr"]
    losses = []
    for step in range(100):
        opt.zero_grad()
        loss = model(**{k: v.to(args.device) for k, v in data[step % len(data)].items()})["loss"]
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % 20 == 0 or step == 99:
            print(f"  step {step:3d}  loss {sum(losses[-10:]) / len(losses[-10:]):.3f}")
    print(f"done in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
