"""Quantisation error of 8-bit Adam moments: fusedlr's companding (FlashOptim's maps) against
bitsandbytes' dynamic map, on the moments of a small GPT trained with fp32 AdamW.

    PYTHONPATH=. python benchmarks/quantization_error.py [--steps 200]

For every tensor of at least 4,096 elements, each moment is quantised with blocks of 256 and
float32 absmax scales, and decoded; reported: the relative L2 error of m, of v, and of the Adam
direction m / (sqrt(v) + eps) (what the update uses), pooled over tensors. bitsandbytes is used
for its dynamic map (``create_dynamic_map``), the quantiser is nearest-code in plain torch.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from fusedlr import _quantized  # noqa: E402

EPS = 1e-8


def trained_moments(steps: int):
    import tiny_gpt

    torch.manual_seed(0)
    model = tiny_gpt.TinyGPT(width=64)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.999), weight_decay=0.1)
    for inputs, targets in tiny_gpt.batches(steps, "cpu"):
        loss = torch.nn.functional.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return [(s["exp_avg"].flatten(), s["exp_avg_sq"].flatten()) for p, s in opt.state.items() if p.numel() >= 4096]


def companded(m, v):
    m_hat = _quantized.dequantize_signed(*_quantized.quantize_signed(m))
    v_hat = _quantized.dequantize_unsigned(*_quantized.quantize_unsigned(v))
    return m_hat, v_hat


def dynamic_map(m, v):
    from bitsandbytes.functional import create_dynamic_map

    def roundtrip(x, code):
        blocks = _quantized._blocks(x)
        scale = blocks.abs().amax(dim=1, keepdim=True).clamp_min(1e-30)
        normed = (blocks / scale).flatten()
        nearest = (normed[:, None] - code[None, :]).abs().argmin(dim=1)
        return (code[nearest].view_as(blocks) * scale).flatten()[: x.numel()]

    return roundtrip(m, create_dynamic_map(signed=True)), roundtrip(v, create_dynamic_map(signed=False))


def errors(moments, method):
    num = {"m": 0.0, "v": 0.0, "direction": 0.0}
    den = dict.fromkeys(num, 0.0)
    for m, v in moments:
        m_hat, v_hat = method(m, v)
        d, d_hat = m / (v.sqrt() + EPS), m_hat / (v_hat.sqrt() + EPS)
        for name, exact, approx in (("m", m, m_hat), ("v", v, v_hat), ("direction", d, d_hat)):
            num[name] += (exact - approx).square().sum().item()
            den[name] += exact.square().sum().item()
    return {name: (num[name] / den[name]) ** 0.5 for name in num}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    moments = trained_moments(args.steps)
    print(f"{len(moments)} tensors, {sum(m.numel() for m, _ in moments)} elements, after {args.steps} steps")
    print("| map (blocks of 256, fp32 scales) | rel. error m | rel. error v | rel. error m/(sqrt(v)+eps) |")
    print("| --- | --- | --- | --- |")
    methods = {"companding (fusedlr, FlashOptim's maps)": companded}
    try:
        import bitsandbytes  # noqa: F401

        methods["dynamic map (bitsandbytes)"] = dynamic_map
    except Exception as error:  # not installed, or no CPU build
        print(f"(bitsandbytes unavailable: {error})")
    for name, method in methods.items():
        e = errors(moments, method)
        print(f"| {name} | {e['m']:.4f} | {e['v']:.4f} | {e['direction']:.4f} |")


if __name__ == "__main__":
    main()
