"""Every Triton kernel variant the launcher uses compiles to a cubin for Hopper and Ampere,
here, without a GPU (Triton ships ptxas); and the PTX shows what the design promises:
no atomics (reproducible reductions) and IEEE division and square root in float32 updates."""

import itertools
import re

import pytest
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from fusedlr import _plan
from fusedlr._triton import kernels

ELEMS = {"fp32": tl.float32, "fp64": tl.float64, "fp16": tl.float16, "bf16": tl.bfloat16}
CHUNKED = {
    "tensor_table": "*i64",
    "num_tensors": "i32",
    "chunk_table": "*i64",
    "num_chunks": "i32",
    "chunk_base": "i32",
}


def _compile(kernel, signature, constexprs, arch=90):
    signature = dict(signature, **{name: "constexpr" for name in constexprs})
    # The launcher runs the single-program kernels with one warp (their reductions stay in-warp).
    options = {"num_warps": 1} if kernel in (kernels._finalize_kernel, kernels._schedule_values_kernel) else {}
    source = ASTSource(kernel, signature, constexprs=constexprs)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)


def _chunk_constexprs(elem):
    return dict(ELEM=ELEMS[elem], COMPUTE=tl.float64 if elem == "fp64" else tl.float32, CHUNK=_plan.CHUNK_SIZE,
                BLOCK=1024)  # fmt: skip


# The update kernel's memory-lean options, off (fusedlr/_quantized.py, _split_master.py).
LEAN_OFF = dict(QUANTIZED=False, QBLOCK=256, SPLIT_MASTER=False)


def _variants():
    for elem, with_param, clip_value in itertools.product(ELEMS, (False, True), (False, True)):
        sig = dict(CHUNKED, partial_grad="*fp64", partial_param="*fp64", hyper="*fp64", num_groups="i32",
                   grad_scale="*fp32")  # fmt: skip
        yield (
            f"grad_sumsq-{elem}-agc{with_param}" + ("-clip_value" if clip_value else ""),
            kernels._grad_sumsq_kernel,
            sig,
            dict(_chunk_constexprs(elem), GRAD_ELEM=ELEMS[elem], WITH_PARAM=with_param, ALIGNED=True,
                 HAS_CLIP_VALUE=clip_value, HAS_GRAD_SCALE=clip_value),
        )  # fmt: skip
    for with_param in (False, True):
        sig = dict(tensor_table="*i64", num_tensors="i32", partial_grad="*fp64", partial_param="*fp64",
                   grad_sumsq="*fp64", param_sumsq="*fp64")  # fmt: skip
        yield f"tensor_sumsq-agc{with_param}", kernels._tensor_sumsq_kernel, sig, dict(WITH_PARAM=with_param, BLOCK=256)
    finalize_flags = [(False, False, False, False), (True, True, False, False), (True, False, True, False),
                      (True, True, True, False), (True, True, True, True), (False, False, False, True)]  # fmt: skip
    finalize_variants = [(flags, rule) for flags in finalize_flags for rule in ("adamw", "lion")]
    finalize_variants += [(flags, rule) for flags in finalize_flags[::4] for rule in ("sgd", "schedulefree")]
    for (norms, clip, agc, clip_value), rule in finalize_variants:
        sig = dict(tensor_table="*i64", num_tensors="i32", hyper="*fp64", num_groups="i32", grad_sumsq="*fp64",
                   param_sumsq="*fp64", coef="*fp64", counter="*i64", norm_out="*fp32", grad_scale="*fp32",
                   found_inf="*fp32", status="*fp32", skipped_steps="*i64", group_sums="*fp64")  # fmt: skip
        amp = norms  # GradScaler's scale, found_inf and skip_nonfinite with the norm variants
        flags = dict(HAS_NORMS=norms, HAS_CLIP=clip, HAS_AGC=agc, RULE=_plan.RULES[rule], HAS_GRAD_SCALE=amp,
                     HAS_FOUND_INF=amp, SKIP_NONFINITE=amp, BLOCK=1024, REGISTERS=64,
                     HAS_CLIP_VALUE=clip_value)  # fmt: skip
        label = f"finalize-n{norms}c{clip}a{agc}" + ("v" if clip_value else "")
        label += f"-adamw{rule == 'adamw'}" if rule in ("adamw", "lion") else f"-{rule}"
        yield label, kernels._finalize_kernel, sig, flags
    yield "schedule-values", kernels._schedule_values_kernel, dict(sched="*fp64", ks="*i64", out_scale="*fp64",
                                                                   out_offset="*fp64"), dict(REGISTERS=64)  # fmt: skip
    for elem, name in itertools.product(ELEMS, ("adamw", "lion", "sgd", "schedulefree")):
        for aligned, clip_value in ((True, False), (False, False), (True, True)):
            flags = dict(_chunk_constexprs(elem), GRAD_ELEM=ELEMS[elem], STATE_ELEM=ELEMS[elem],
                         IS_FP64=elem == "fp64", RULE=_plan.RULES[name], HAS_MAX=name == "adamw",
                         MASTER=False, STOCHASTIC=False, ALIGNED=aligned, HAS_CLIP_VALUE=clip_value,
                         **LEAN_OFF)  # fmt: skip
            suffix = ("" if aligned else "-unaligned") + ("-clip_value" if clip_value else "")
            yield (f"{name}-{elem}{suffix}", kernels._update_kernel,
                   dict(CHUNKED, coef="*fp64", status="*fp32"), flags)  # fmt: skip
    # Mixed precision: fp32 master + fp32 grads (main_grad), stochastic rounding, bf16 states.
    mixed = {
        "master": dict(ELEM=tl.bfloat16, GRAD_ELEM=tl.float32, STATE_ELEM=tl.float32, MASTER=True, STOCHASTIC=False),
        "stochastic": dict(ELEM=tl.bfloat16, GRAD_ELEM=tl.bfloat16, STATE_ELEM=tl.bfloat16, MASTER=False,
                           STOCHASTIC=True),
        "bf16-states": dict(ELEM=tl.float32, GRAD_ELEM=tl.float32, STATE_ELEM=tl.bfloat16, MASTER=False,
                            STOCHASTIC=False),
    }  # fmt: skip
    for (label, storage), name in itertools.product(mixed.items(), ("adamw", "lion", "sgd", "schedulefree")):
        flags = dict(_chunk_constexprs("bf16"), **storage, IS_FP64=False, RULE=_plan.RULES[name], HAS_MAX=False,
                     ALIGNED=True, HAS_CLIP_VALUE=label == "master", **LEAN_OFF)  # fmt: skip
        yield f"{name}-{label}", kernels._update_kernel, dict(CHUNKED, coef="*fp64", status="*fp32"), flags
    # Memory-lean state (AdamW and LION): 8-bit moments (fp32 params, or bf16 + fp32 master), split masters.
    bf16_master = dict(ELEM=tl.bfloat16, GRAD_ELEM=tl.bfloat16, STATE_ELEM=tl.float32, STOCHASTIC=False)
    lean = {
        "int8": dict(ELEM=tl.float32, GRAD_ELEM=tl.float32, STATE_ELEM=tl.float32, MASTER=False, STOCHASTIC=False,
                     QUANTIZED=True),
        "int8-master": dict(bf16_master, MASTER=True, QUANTIZED=True),
        "int8-split": dict(bf16_master, MASTER=False, QUANTIZED=True, SPLIT_MASTER=True),
        "split": dict(bf16_master, MASTER=False, SPLIT_MASTER=True),
    }  # fmt: skip
    for (label, storage), name in itertools.product(lean.items(), ("adamw", "lion")):
        flags = dict(_chunk_constexprs("bf16"), **dict(LEAN_OFF, **storage), IS_FP64=False,
                     RULE=_plan.RULES[name], HAS_MAX=False, ALIGNED=True, HAS_CLIP_VALUE=False)  # fmt: skip
        flags["COMPUTE"] = tl.float32
        yield f"{name}-{label}", kernels._update_kernel, dict(CHUNKED, coef="*fp64", status="*fp32"), flags


VARIANTS = list(_variants())


@pytest.mark.parametrize("name, kernel, signature, constexprs", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_compiles_for_hopper_without_atomics(name, kernel, signature, constexprs):
    compiled = _compile(kernel, signature, constexprs)
    ptx = compiled.asm["ptx"]
    assert len(compiled.asm["cubin"]) > 0
    assert not re.search(r"\b(atom|red)\.", ptx), f"{name}: atomics make the reduction order vary"
    ieee = ("adamw-fp32", "lion-fp32", "adamw-bf16", "adamw-fp16", "sgd-fp32", "sgd-bf16", "schedulefree-fp32",
            "schedulefree-bf16", "schedulefree-fp16")  # fmt: skip
    if name.startswith(ieee):
        assert not re.search(r"\b(div\.full|div\.approx|sqrt\.approx|rsqrt\.approx)", ptx), name
    if name.startswith(("adamw-", "schedulefree-")):
        assert "sqrt.rn" in ptx and "div.rn" in ptx, name


@pytest.mark.parametrize(
    "name", [v[0] for v in VARIANTS if v[0].startswith(("adamw-", "lion-", "sgd-", "schedulefree-", "grad_sumsq-"))]
)
def test_aligned_buckets_move_16_bytes_per_access(name):
    """Full blocks of an aligned bucket load and store 16 bytes at a time (v4.b32 / v2.b64);
    an unaligned bucket (a param viewed at an odd offset) keeps scalar accesses."""
    _, kernel, signature, constexprs = next(v for v in VARIANTS if v[0] == name)
    ptx = _compile(kernel, signature, constexprs).asm["ptx"]
    wide = re.findall(r"\bld\.global(?:\.\w+)*\.v[24]\.b(?:32|64)", ptx)
    if constexprs.get("ALIGNED"):
        assert wide, f"{name}: no 16-byte loads"
        if kernel is kernels._update_kernel:
            assert re.search(r"\bst\.global(?:\.\w+)*\.v[24]\.b(?:32|64)", ptx), f"{name}: no 16-byte stores"
    else:
        assert not wide, name


@pytest.mark.parametrize("name", ["adamw-fp32", "lion-bf16", "finalize-nTruecTrueaTrue-adamwTrue"])
def test_compiles_for_ampere(name):
    _, kernel, signature, constexprs = next(v for v in VARIANTS if v[0] == name)
    assert len(_compile(kernel, signature, constexprs, arch=80).asm["cubin"]) > 0
