"""Triton kernels of one fused optimizer step (see fusedlr/_plan.py for the tables they read).

Per step, on one device:
  1. ``_grad_sumsq_kernel``   one launch per dtype bucket, one program per chunk: partial sums
     of squares of grads (and params, for AGC). Only when clipping or AGC is on.
  2. ``_tensor_sumsq_kernel`` one launch, one program per tensor: adds that tensor's partials in
     chunk order. Together with 1 this is the norm pass: no atomics, so bitwise reproducible.
  3. ``_finalize_kernel``     one launch, one program: AGC scales, global norm, clip coefficient,
     the schedule (its program, run from the device counter), per-tensor step counts and bias
     corrections, written as per-tensor coefficients; the decision to skip the step (GradScaler's
     found_inf, or skip_nonfinite and a non-finite norm), written to ``status``; advances the
     counter unless skipped.
  4. ``_update_kernel``       one launch per dtype bucket: the AdamW, LION, SGD or schedule-free
     AdamW update (constexpr RULE; nothing when ``status`` says skip).

The coefficient columns (``COEF_COLUMNS``) are named after AdamW's; SGD and schedule-free reuse
them (see ``_finalize_kernel``): SGD  beta1 = the buffer's decay (momentum, 0 on a buffer's
first update), one_minus_beta1 = the grad's weight in it (1 - dampening, 1 on the first),
beta2 = nesterov's momentum (0 without), one_minus_beta2 = 1 where the tensor has a momentum
buffer, eps = the coupled weight decay, decay = the decoupled one. Schedule-free: step_size =
the warmed-up lr, bc2_sqrt = the bias correction 1 - beta2^(k+1) itself, beta1 = ckp1,
one_minus_beta1 = the y step lr * (beta1 * (1 - ckp1) - 1), decay = the weight decay.

Hyperparameters only ever arrive through device tables, never as ``tl.constexpr`` or float
arguments: a new lr neither recompiles nor loses float64 precision. Scalar maths of the
finalize runs in float64, like torch's host-side Python floats; element maths runs in float32
(float64 for float64 params) with IEEE division and square root, like torch's kernels.
"""

import triton
import triton.language as tl

from .. import _plan, _precision, _quantized
from ..schedules import program

# Column and slot indices of the tables in fusedlr/_plan.py, as compile-time constants.
T_PARAM = tl.constexpr(_plan.TENSOR_COLUMNS.index("param"))
T_GRAD = tl.constexpr(_plan.TENSOR_COLUMNS.index("grad"))
T_EXP_AVG = tl.constexpr(_plan.TENSOR_COLUMNS.index("exp_avg"))
T_EXP_AVG_SQ = tl.constexpr(_plan.TENSOR_COLUMNS.index("exp_avg_sq"))
T_MAX_EXP_AVG_SQ = tl.constexpr(_plan.TENSOR_COLUMNS.index("max_exp_avg_sq"))
T_STEP = tl.constexpr(_plan.TENSOR_COLUMNS.index("step"))
T_NUMEL = tl.constexpr(_plan.TENSOR_COLUMNS.index("numel"))
T_GROUP = tl.constexpr(_plan.TENSOR_COLUMNS.index("group"))
T_CHUNK_BEGIN = tl.constexpr(_plan.TENSOR_COLUMNS.index("chunk_begin"))
T_NUM_CHUNKS = tl.constexpr(_plan.TENSOR_COLUMNS.index("num_chunks"))
T_MASTER = tl.constexpr(_plan.TENSOR_COLUMNS.index("master"))
T_POSITION = tl.constexpr(_plan.TENSOR_COLUMNS.index("position"))
T_EXP_AVG_SCALES = tl.constexpr(_plan.TENSOR_COLUMNS.index("exp_avg_scales"))
T_EXP_AVG_SQ_SCALES = tl.constexpr(_plan.TENSOR_COLUMNS.index("exp_avg_sq_scales"))
T_MASTER_RESIDUAL = tl.constexpr(_plan.TENSOR_COLUMNS.index("master_residual"))
G_LR = tl.constexpr(_plan.GROUP_COLUMNS.index("lr"))
G_WEIGHT_DECAY = tl.constexpr(_plan.GROUP_COLUMNS.index("weight_decay"))
G_BETA1 = tl.constexpr(_plan.GROUP_COLUMNS.index("beta1"))
G_BETA2 = tl.constexpr(_plan.GROUP_COLUMNS.index("beta2"))
G_EPS = tl.constexpr(_plan.GROUP_COLUMNS.index("eps"))
G_AGC_CLIP_FACTOR = tl.constexpr(_plan.GROUP_COLUMNS.index("agc_clip_factor"))
G_AGC_EPS = tl.constexpr(_plan.GROUP_COLUMNS.index("agc_eps"))
G_GRAD_SIGN = tl.constexpr(_plan.GROUP_COLUMNS.index("grad_sign"))
G_SEED = tl.constexpr(_plan.GROUP_COLUMNS.index("seed"))
# Columns of the per-group block at the end of ``hyper`` (after the schedule program).
R_DAMPENING = tl.constexpr(_plan.RULE_GROUP_COLUMNS.index("dampening"))
R_NESTEROV = tl.constexpr(_plan.RULE_GROUP_COLUMNS.index("nesterov"))
R_COUPLED_WEIGHT_DECAY = tl.constexpr(_plan.RULE_GROUP_COLUMNS.index("coupled_weight_decay"))
R_WARMUP_STEPS = tl.constexpr(_plan.RULE_GROUP_COLUMNS.index("warmup_steps"))
R_R = tl.constexpr(_plan.RULE_GROUP_COLUMNS.index("r"))
R_WEIGHT_LR_POWER = tl.constexpr(_plan.RULE_GROUP_COLUMNS.index("weight_lr_power"))
RULE_ADAMW = tl.constexpr(_plan.RULES["adamw"])
RULE_LION = tl.constexpr(_plan.RULES["lion"])
RULE_SGD = tl.constexpr(_plan.RULES["sgd"])
RULE_SCHEDULEFREE = tl.constexpr(_plan.RULES["schedulefree"])
S_HOST_MULTIPLIER = tl.constexpr(_plan.SCHEDULE_SLOTS.index("host_multiplier"))
S_MAX_GRAD_NORM = tl.constexpr(_plan.SCHEDULE_SLOTS.index("max_grad_norm"))
S_NUM_INSTRUCTIONS = tl.constexpr(_plan.SCHEDULE_SLOTS.index("num_instructions"))
S_SCALE_REGISTER = tl.constexpr(_plan.SCHEDULE_SLOTS.index("scale_register"))
S_OFFSET_REGISTER = tl.constexpr(_plan.SCHEDULE_SLOTS.index("offset_register"))
S_CLIP_VALUE = tl.constexpr(_plan.SCHEDULE_SLOTS.index("clip_value"))
C_GRAD_SCALE = tl.constexpr(_plan.COEF_COLUMNS.index("grad_scale"))
C_DECAY = tl.constexpr(_plan.COEF_COLUMNS.index("decay"))
C_STEP_SIZE = tl.constexpr(_plan.COEF_COLUMNS.index("step_size"))
C_BC2_SQRT = tl.constexpr(_plan.COEF_COLUMNS.index("bc2_sqrt"))
C_BETA1 = tl.constexpr(_plan.COEF_COLUMNS.index("beta1"))
C_ONE_MINUS_BETA1 = tl.constexpr(_plan.COEF_COLUMNS.index("one_minus_beta1"))
C_BETA2 = tl.constexpr(_plan.COEF_COLUMNS.index("beta2"))
C_ONE_MINUS_BETA2 = tl.constexpr(_plan.COEF_COLUMNS.index("one_minus_beta2"))
C_EPS = tl.constexpr(_plan.COEF_COLUMNS.index("eps"))
C_SR_KEY = tl.constexpr(_plan.COEF_COLUMNS.index("sr_key"))
C_UNSCALE = tl.constexpr(_plan.COEF_COLUMNS.index("unscale"))
C_CLIP_VALUE = tl.constexpr(_plan.COEF_COLUMNS.index("clip_value"))
SIGNED_LEVELS = tl.constexpr(_quantized.SIGNED_LEVELS)
UNSIGNED_LEVELS = tl.constexpr(_quantized.UNSIGNED_LEVELS)
SIGNED_SLACK = tl.constexpr(_quantized.SIGNED_SLACK)
HASH_MUL1 = tl.constexpr(_precision.HASH_MUL1)
HASH_MUL2 = tl.constexpr(_precision.HASH_MUL2)
G_NUM_COLUMNS = tl.constexpr(len(_plan.GROUP_COLUMNS))

NUM_SCHEDULE_SLOTS = tl.constexpr(len(_plan.SCHEDULE_SLOTS))
INSTRUCTION_WIDTH = tl.constexpr(program.INSTRUCTION_WIDTH)
OP_CONST = tl.constexpr(program.OPCODES["const"])
OP_ADD = tl.constexpr(program.OPCODES["add"])
OP_SUB = tl.constexpr(program.OPCODES["sub"])
OP_MUL = tl.constexpr(program.OPCODES["mul"])
OP_DIV = tl.constexpr(program.OPCODES["div"])
OP_MIN = tl.constexpr(program.OPCODES["min"])
OP_MAX = tl.constexpr(program.OPCODES["max"])
OP_LT = tl.constexpr(program.OPCODES["lt"])
OP_LE = tl.constexpr(program.OPCODES["le"])
OP_WHERE = tl.constexpr(program.OPCODES["where"])
OP_COS = tl.constexpr(program.OPCODES["cos"])
OP_SQRT = tl.constexpr(program.OPCODES["sqrt"])
OP_EXP = tl.constexpr(program.OPCODES["exp"])
OP_LOG = tl.constexpr(program.OPCODES["log"])
OP_FLOOR = tl.constexpr(program.OPCODES["floor"])
OP_POW = tl.constexpr(program.OPCODES["pow"])
OP_ABS = tl.constexpr(program.OPCODES["abs"])


@triton.jit
def _address(tensor_table, col, num_tensors, t, ELEM: tl.constexpr):
    """Pointer to the tensor whose address sits in column ``col`` of the tensor table."""
    return tl.load(tensor_table + col * num_tensors + t).to(tl.pointer_type(ELEM))


@triton.jit
def _addresses(tensor_table, col, num_tensors, t, mask, ELEM: tl.constexpr):
    """Pointers of a vector ``t`` of tensors; lanes off ``mask`` (past the last tensor) read no
    table entry, which would lie past the table's end (an illegal address on the GPU), and get 0."""
    return tl.load(tensor_table + col * num_tensors + t, mask=mask, other=0).to(tl.pointer_type(ELEM))


@triton.jit
def _chunk_extent(tensor_table, num_tensors, chunk_table, num_chunks, c, CHUNK: tl.constexpr):
    """(tensor index, first element, elements in this chunk) of chunk ``c``."""
    t = tl.load(chunk_table + c)
    start = tl.load(chunk_table + num_chunks + c)
    numel = tl.load(tensor_table + T_NUMEL * num_tensors + t)
    return t, start, tl.minimum(numel - start, CHUNK)


@triton.jit
def _grad_sumsq_kernel(
    tensor_table,
    num_tensors,
    chunk_table,
    num_chunks,
    chunk_base,
    partial_grad,
    partial_param,
    hyper,
    num_groups,
    grad_scale,
    ELEM: tl.constexpr,
    GRAD_ELEM: tl.constexpr,
    COMPUTE: tl.constexpr,
    WITH_PARAM: tl.constexpr,
    ALIGNED: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK: tl.constexpr,
    HAS_CLIP_VALUE: tl.constexpr,
    HAS_GRAD_SCALE: tl.constexpr,
):
    """Partial sums of squares of one chunk. HAS_CLIP_VALUE: of the grads unscaled (a GradScaler's
    ``grad_scale``, when HAS_GRAD_SCALE) and clamped to the ``clip_value`` slot of ``hyper``."""
    c = chunk_base + tl.program_id(0)
    t, start, length = _chunk_extent(tensor_table, num_tensors, chunk_table, num_chunks, c, CHUNK)
    grad = _address(tensor_table, T_GRAD, num_tensors, t, GRAD_ELEM) + start
    param = _address(tensor_table, T_PARAM, num_tensors, t, ELEM) + start
    if ALIGNED:  # the launcher checked every address of the bucket (inline: a helper loses the hint)
        grad = tl.multiple_of(grad, 16)
        param = tl.multiple_of(param, 16)
    unscale = tl.full([], 1.0, COMPUTE)
    clip_value = tl.full([], 0.0, COMPUTE)
    if HAS_CLIP_VALUE:
        clip_value = tl.load(hyper + G_NUM_COLUMNS * num_groups + S_CLIP_VALUE).to(COMPUTE)
        if HAS_GRAD_SCALE:  # as GradScaler: the float64 reciprocal, rounded to float32
            unscale = (1.0 / tl.load(grad_scale).to(tl.float64)).to(tl.float32).to(COMPUTE)
    acc_grad = tl.zeros([BLOCK], COMPUTE)
    acc_param = tl.zeros([BLOCK], COMPUTE)
    full = (length // BLOCK) * BLOCK
    for i in range(0, full, BLOCK):
        offs = i + tl.arange(0, BLOCK).to(tl.int64)
        g = _load(grad, offs, offs < length, COMPUTE, False)
        if HAS_CLIP_VALUE:
            g = _clamp(g * unscale, clip_value)
        acc_grad += g * g
        if WITH_PARAM:
            p = _load(param, offs, offs < length, COMPUTE, False)
            acc_param += p * p
    offs = full + tl.arange(0, BLOCK).to(tl.int64)
    g = _load(grad, offs, offs < length, COMPUTE, True)
    if HAS_CLIP_VALUE:
        g = _clamp(g * unscale, clip_value)
    acc_grad += g * g
    if WITH_PARAM:
        p = _load(param, offs, offs < length, COMPUTE, True)
        acc_param += p * p
    tl.store(partial_grad + c, tl.sum(acc_grad).to(tl.float64))
    if WITH_PARAM:
        tl.store(partial_param + c, tl.sum(acc_param).to(tl.float64))


@triton.jit
def _tensor_sumsq_kernel(
    tensor_table,
    num_tensors,
    partial_grad,
    partial_param,
    grad_sumsq,
    param_sumsq,
    WITH_PARAM: tl.constexpr,
    BLOCK: tl.constexpr,
):
    t = tl.program_id(0)
    begin = tl.load(tensor_table + T_CHUNK_BEGIN * num_tensors + t)
    count = tl.load(tensor_table + T_NUM_CHUNKS * num_tensors + t)
    acc_grad = tl.zeros([BLOCK], tl.float64)
    acc_param = tl.zeros([BLOCK], tl.float64)
    for i in range(0, count, BLOCK):
        offs = i + tl.arange(0, BLOCK).to(tl.int64)
        mask = offs < count
        acc_grad += tl.load(partial_grad + begin + offs, mask=mask, other=0.0)
        if WITH_PARAM:
            acc_param += tl.load(partial_param + begin + offs, mask=mask, other=0.0)
    tl.store(grad_sumsq + t, tl.sum(acc_grad))
    if WITH_PARAM:
        tl.store(param_sumsq + t, tl.sum(acc_param))


@triton.jit
def _pow_int(base, n):
    """base ** n for integer-valued float64 0 <= n <= 2**24, by squaring (only multiplications).

    2**24 bounds torch's float32 step counter: past it, ``step + 1 == step``.
    """
    e = n.to(tl.int64)
    result = base * 0.0 + 1.0
    b = base
    for _ in tl.static_range(25):
        result = tl.where((e & 1) == 1, result * b, result)
        b = b * b
        e = e >> 1
    return result


@triton.jit
def _register(registers, index, REGISTERS: tl.constexpr):
    """Read register ``index`` of the vector register file (a masked sum: exact)."""
    return tl.sum(tl.where(tl.arange(0, REGISTERS) == index, registers, 0.0))


@triton.jit
def _pow(a, b):
    """a ** b: exact by squaring for integral |b| < 2**25 (as the host's pow is for integral
    results), exp(b * log(a)) otherwise; NaN for a negative base with a fractional exponent."""
    n = tl.abs(b)
    by_squaring = _pow_int(a, n)
    by_squaring = tl.where(b < 0.0, 1.0 / by_squaring, by_squaring)
    integral = (b == tl.floor(b)) & (n < 33554432.0)
    return tl.where(integral, by_squaring, tl.exp(b * tl.log(a)))


@triton.jit
def _run_schedule_program(sched, k, REGISTERS: tl.constexpr):
    """Device twin of fusedlr.schedules.program.run_on_host: (scale, offset) at update k."""
    count = tl.load(sched + S_NUM_INSTRUCTIONS).to(tl.int32)
    code = sched + NUM_SCHEDULE_SLOTS
    index = tl.arange(0, REGISTERS)
    registers = tl.where(index == 0, k, tl.zeros([REGISTERS], tl.float64))
    for i in range(0, count):
        at = code + i * INSTRUCTION_WIDTH
        op = tl.load(at).to(tl.int32)
        # Operand reads inlined (not _register): the CPU interpreter pays per helper call.
        a = tl.sum(tl.where(index == tl.load(at + 1).to(tl.int32), registers, 0.0))
        b = tl.sum(tl.where(index == tl.load(at + 2).to(tl.int32), registers, 0.0))
        c = tl.sum(tl.where(index == tl.load(at + 3).to(tl.int32), registers, 0.0))
        if op == OP_CONST:
            r = tl.load(at + 4)
        elif op == OP_ADD:
            r = a + b
        elif op == OP_SUB:
            r = a - b
        elif op == OP_MUL:
            r = a * b
        elif op == OP_DIV:
            r = a / b
        elif op == OP_MIN:
            r = tl.minimum(a, b)
        elif op == OP_MAX:
            r = tl.maximum(a, b)
        elif op == OP_LT:
            r = (a < b).to(tl.float64)
        elif op == OP_LE:
            r = (a <= b).to(tl.float64)
        elif op == OP_WHERE:
            r = tl.where(a != 0.0, b, c)
        elif op == OP_COS:
            r = tl.cos(a)
        elif op == OP_SQRT:
            r = tl.sqrt(a)
        elif op == OP_EXP:
            r = tl.exp(a)
        elif op == OP_LOG:
            r = tl.log(a)
        elif op == OP_FLOOR:
            r = tl.floor(a)
        elif op == OP_POW:
            r = _pow(a, b)
        else:
            r = tl.abs(a)
        registers = tl.where(index == i + 1, r, registers)
    scale = _register(registers, tl.load(sched + S_SCALE_REGISTER).to(tl.int32), REGISTERS)
    offset = _register(registers, tl.load(sched + S_OFFSET_REGISTER).to(tl.int32), REGISTERS)
    return scale * tl.load(sched + S_HOST_MULTIPLIER), offset


@triton.jit
def _agc_scale(tensor_table, num_tensors, hyper, num_groups, grad_sumsq, param_sumsq, t, mask, inv_scale):
    """Per-tensor AGC scale (1 where AGC is off): max(||p||, eps) * factor / (||g|| + 1e-6), with
    ||g|| the norm of the unscaled grad (``inv_scale`` undoes a GradScaler's loss scale)."""
    group = tl.load(tensor_table + T_GROUP * num_tensors + t, mask=mask, other=0)
    factor = tl.load(hyper + G_AGC_CLIP_FACTOR * num_groups + group, mask=mask, other=0.0)
    agc_eps = tl.load(hyper + G_AGC_EPS * num_groups + group, mask=mask, other=1.0)
    g_norm = tl.sqrt(tl.load(grad_sumsq + t, mask=mask, other=0.0)) * inv_scale
    p_norm = tl.sqrt(tl.load(param_sumsq + t, mask=mask, other=0.0))
    max_norm = tl.maximum(p_norm, agc_eps) * factor
    norm_eps = tl.full([], 1e-6, tl.float64)
    return tl.where((factor > 0.0) & (g_norm > max_norm), max_norm / (g_norm + norm_eps), 1.0)


@triton.jit
def _finalize_kernel(
    tensor_table,
    num_tensors,
    hyper,
    num_groups,
    grad_sumsq,
    param_sumsq,
    coef,
    counter,
    norm_out,
    grad_scale,
    found_inf,
    status,
    skipped_steps,
    group_sums,
    HAS_NORMS: tl.constexpr,
    HAS_CLIP: tl.constexpr,
    HAS_AGC: tl.constexpr,
    RULE: tl.constexpr,
    HAS_GRAD_SCALE: tl.constexpr,
    HAS_FOUND_INF: tl.constexpr,
    SKIP_NONFINITE: tl.constexpr,
    BLOCK: tl.constexpr,
    REGISTERS: tl.constexpr,
    HAS_CLIP_VALUE: tl.constexpr,
):
    sched = hyper + G_NUM_COLUMNS * num_groups
    clip = tl.full([], 1.0, tl.float64)
    inv_scale = tl.full([], 1.0, tl.float64)
    unscale = tl.full([], 1.0, tl.float64)
    if HAS_GRAD_SCALE:  # a GradScaler's loss scale, undone here: grads are never rewritten
        if HAS_CLIP_VALUE:
            # The update unscales each element before clamping it (``unscale``, GradScaler's float32
            # reciprocal); the norm pass already summed unscaled, clamped grads.
            unscale = (1.0 / tl.load(grad_scale).to(tl.float64)).to(tl.float32).to(tl.float64)
        else:
            inv_scale = 1.0 / tl.load(grad_scale).to(tl.float64)
    skip = tl.full([], 0, tl.int32)
    if HAS_FOUND_INF:
        skip = (tl.load(found_inf) != 0.0).to(tl.int32)
    if HAS_NORMS:
        # Global norm after AGC: sqrt(sum_t (s_agc_t * ||g_t||)^2), in a fixed order.
        acc = tl.zeros([BLOCK], tl.float64)
        for first in range(0, num_tensors, BLOCK):
            t = first + tl.arange(0, BLOCK)
            mask = t < num_tensors
            sumsq = tl.load(grad_sumsq + t, mask=mask, other=0.0) * inv_scale * inv_scale
            if HAS_AGC:
                s_agc = _agc_scale(
                    tensor_table, num_tensors, hyper, num_groups, grad_sumsq, param_sumsq, t, mask, inv_scale
                )
                sumsq = sumsq * s_agc * s_agc
            acc += sumsq
        total = tl.sqrt(tl.sum(acc))
        tl.store(norm_out, total.to(tl.float32))
        if HAS_CLIP:
            norm_eps = tl.full([], 1e-6, tl.float64)
            ratio = tl.load(sched + S_MAX_GRAD_NORM) / (total + norm_eps)
            clip = tl.minimum(ratio, 1.0, propagate_nan=tl.PropagateNan.ALL)
        if SKIP_NONFINITE:
            skip = skip | ((total - total) != 0.0).to(tl.int32)  # inf - inf and nan - nan are nan
    # A skipped step changes nothing: no step count, no counter, and the updates read `status`.
    tl.store(status, skip.to(tl.float32))
    tl.store(skipped_steps, tl.load(skipped_steps) + skip.to(tl.int64))

    step_count = tl.load(counter)
    lr_scale, lr_offset = _run_schedule_program(sched, step_count.to(tl.float64), REGISTERS)
    # SGD's and schedule-free's group hyperparameters: after the schedule program.
    rules = sched + NUM_SCHEDULE_SLOTS + tl.load(sched + S_NUM_INSTRUCTIONS).to(tl.int64) * INSTRUCTION_WIDTH
    if RULE == RULE_SCHEDULEFREE:
        _schedulefree_groups(hyper, rules, num_groups, group_sums, step_count.to(tl.float64), lr_scale, lr_offset,
                             skip, BLOCK)  # fmt: skip
    for first in range(0, num_tensors, BLOCK):
        t = first + tl.arange(0, BLOCK)
        mask = t < num_tensors
        group = tl.load(tensor_table + T_GROUP * num_tensors + t, mask=mask, other=0)
        lr = tl.load(hyper + G_LR * num_groups + group, mask=mask, other=0.0) * lr_scale + lr_offset
        weight_decay = tl.load(hyper + G_WEIGHT_DECAY * num_groups + group, mask=mask, other=0.0)
        beta1 = tl.load(hyper + G_BETA1 * num_groups + group, mask=mask, other=0.0)
        beta2 = tl.load(hyper + G_BETA2 * num_groups + group, mask=mask, other=0.0)
        scale = tl.load(hyper + G_GRAD_SIGN * num_groups + group, mask=mask, other=1.0) * clip * inv_scale
        if HAS_AGC:
            scale = scale * _agc_scale(
                tensor_table, num_tensors, hyper, num_groups, grad_sumsq, param_sumsq, t, mask, inv_scale
            )
        eps = tl.load(hyper + G_EPS * num_groups + group, mask=mask, other=0.0)
        decay = 1.0 - lr * weight_decay
        w1 = 1.0 - beta1
        w2 = 1.0 - beta2
        step_size = lr
        bc2_sqrt = lr * 0.0 + 1.0
        if RULE == RULE_ADAMW:
            step_ptr = _addresses(tensor_table, T_STEP, num_tensors, t, mask, tl.float32)
            step = tl.load(step_ptr, mask=mask, other=0.0) + 1.0
            tl.store(step_ptr, step, mask=mask & (skip == 0))
            step64 = step.to(tl.float64)
            step_size = lr / (1.0 - _pow_int(beta1, step64))
            bc2_sqrt = tl.sqrt(1.0 - _pow_int(beta2, step64))
        elif RULE == RULE_SGD:
            # The momentum buffer's step (0: never written) sits in the step column; a tensor
            # without a buffer (momentum 0) has address 0 there.
            momentum = beta1
            has_buffer = (tl.load(tensor_table + T_STEP * num_tensors + t, mask=mask, other=0) != 0) & (momentum != 0.0)
            step_ptr = _addresses(tensor_table, T_STEP, num_tensors, t, mask, tl.float32)
            step = tl.load(step_ptr, mask=mask & has_buffer, other=0.0)
            tl.store(step_ptr, step + 1.0, mask=mask & has_buffer & (skip == 0))
            first_update = step == 0.0
            dampening = tl.load(rules + R_DAMPENING * num_groups + group, mask=mask, other=0.0)
            nesterov = tl.load(rules + R_NESTEROV * num_groups + group, mask=mask, other=0.0)
            coupled = tl.load(rules + R_COUPLED_WEIGHT_DECAY * num_groups + group, mask=mask, other=0.0) != 0.0
            beta1 = tl.where(first_update, 0.0, momentum)  # torch's first buffer is a clone of the grad
            w1 = tl.where(first_update, 1.0, 1.0 - dampening)
            beta2 = tl.where(nesterov != 0.0, momentum, 0.0)
            w2 = tl.where(has_buffer, 1.0, 0.0)
            eps = tl.where(coupled, weight_decay, 0.0)
            decay = tl.where(coupled, 1.0, decay)
        elif RULE == RULE_SCHEDULEFREE:
            ckp1 = tl.load(group_sums + 2 * num_groups + group, mask=mask, other=0.0)
            step_size = tl.load(group_sums + 3 * num_groups + group, mask=mask, other=0.0)  # warmed-up lr
            bc2_sqrt = 1.0 - _pow_int(beta2, step_count.to(tl.float64) + 1.0)  # not its square root
            w1 = step_size * (beta1 * (1.0 - ckp1) - 1.0)
            beta1 = ckp1
            decay = weight_decay
        out = coef + t
        tl.store(out + C_GRAD_SCALE * num_tensors, scale, mask=mask)
        tl.store(out + C_DECAY * num_tensors, decay, mask=mask)
        tl.store(out + C_STEP_SIZE * num_tensors, step_size, mask=mask)
        tl.store(out + C_BC2_SQRT * num_tensors, bc2_sqrt, mask=mask)
        tl.store(out + C_BETA1 * num_tensors, beta1, mask=mask)
        tl.store(out + C_ONE_MINUS_BETA1 * num_tensors, w1, mask=mask)
        tl.store(out + C_BETA2 * num_tensors, beta2, mask=mask)
        tl.store(out + C_ONE_MINUS_BETA2 * num_tensors, w2, mask=mask)
        tl.store(out + C_EPS * num_tensors, eps, mask=mask)
        # The key of this update's stochastic-rounding stream: hash(hash(hash(seed) ^ position) + k).
        seed = tl.load(hyper + G_SEED * num_groups + group, mask=mask, other=0.0).to(tl.uint32)
        position = tl.load(tensor_table + T_POSITION * num_tensors + t, mask=mask, other=0).to(tl.uint32)
        key = _hash32(_hash32(_hash32(seed) ^ position) + (step_count & 0xFFFFFFFF).to(tl.uint32))
        tl.store(out + C_SR_KEY * num_tensors, key.to(tl.float64), mask=mask)
        if HAS_CLIP_VALUE:
            tl.store(out + C_UNSCALE * num_tensors, unscale + lr * 0.0, mask=mask)
            tl.store(out + C_CLIP_VALUE * num_tensors, tl.load(sched + S_CLIP_VALUE) + lr * 0.0, mask=mask)
    tl.store(counter, step_count + 1 - skip.to(tl.int64))


@triton.jit
def _schedulefree_groups(hyper, rules, num_groups, group_sums, k, lr_scale, lr_offset, skip, BLOCK: tl.constexpr):
    """Schedule-free's per-group bookkeeping of update k, as schedulefree.AdamWScheduleFree does it
    on the host (reference.schedulefree_scalars): every group's warmed-up lr, lr_max, averaging
    weight and weight_sum (rows 0, 1 of ``group_sums``, kept unless the step is skipped), ckp1
    and the lr (rows 2, 3, read by the per-tensor loop after the barrier)."""
    for first in range(0, num_groups, BLOCK):
        g = first + tl.arange(0, BLOCK)
        mask = g < num_groups
        lr = tl.load(hyper + G_LR * num_groups + g, mask=mask, other=0.0) * lr_scale + lr_offset
        warmup = tl.load(rules + R_WARMUP_STEPS * num_groups + g, mask=mask, other=0.0)
        lr = lr * tl.where(k < warmup, (k + 1.0) / warmup, 1.0)
        lr_max = tl.maximum(lr, tl.load(group_sums + g, mask=mask, other=0.0))
        r = tl.load(rules + R_R * num_groups + g, mask=mask, other=0.0)
        power = tl.load(rules + R_WEIGHT_LR_POWER * num_groups + g, mask=mask, other=0.0)
        weight = _pow(k + 1.0 + lr * 0.0, r) * _pow(lr_max, power)
        weight_sum = tl.load(group_sums + num_groups + g, mask=mask, other=0.0) + weight
        ckp1 = tl.where(weight_sum != 0.0, weight / weight_sum, 0.0)
        keep = mask & (skip == 0)
        tl.store(group_sums + g, lr_max, mask=keep)
        tl.store(group_sums + num_groups + g, weight_sum, mask=keep)
        tl.store(group_sums + 2 * num_groups + g, ckp1, mask=mask)
        tl.store(group_sums + 3 * num_groups + g, lr, mask=mask)
    tl.debug_barrier()  # the per-tensor loop reads rows 2 and 3


@triton.jit
def _coef(coef, col, num_tensors, t, COMPUTE: tl.constexpr):
    return tl.load(coef + col * num_tensors + t).to(COMPUTE)


@triton.jit
def _load(ptr, offs, mask, COMPUTE: tl.constexpr, MASKED: tl.constexpr):
    if MASKED:
        return tl.load(ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    return tl.load(ptr + offs).to(COMPUTE)


@triton.jit
def _clamp(g, limit):
    """``g`` clamped to [-limit, limit]; NaN stays NaN, as torch.clamp (clip_grad_value_) keeps it."""
    return tl.where(g < -limit, -limit, tl.where(g > limit, limit, g))


@triton.jit
def _hash32(x):
    """lowbias32 on uint32 (fusedlr/_precision.py has the torch twin): products wrap mod 2**32."""
    x = x ^ (x >> 16)
    x = x * tl.full([], HASH_MUL1, tl.uint32)
    x = x ^ (x >> 15)
    x = x * tl.full([], HASH_MUL2, tl.uint32)
    return x ^ (x >> 16)


@triton.jit
def _bf16_from_bits(bits, value):
    """The upper 16 bits of ``bits`` as bfloat16; NaN ``value``s give the canonical quiet NaN."""
    bits = tl.where(value != value, 0x7FC00000, bits)
    return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def _round(value, ELEM: tl.constexpr):
    """float32 -> storage, to nearest even. bfloat16 through integer bits (c10's own rule):
    exact in the CPU interpreter too, whose float -> bfloat16 conversion is not."""
    if ELEM == tl.bfloat16:
        bits = value.to(tl.uint32, bitcast=True)
        return _bf16_from_bits(bits + 0x7FFF + ((bits >> 16) & 1), value)
    else:
        return value.to(ELEM)


@triton.jit
def _round_stochastically(value, key, index):
    """float32 -> bfloat16, rounded up with probability equal to the dropped bits' fraction;
    the 16 random bits come from the (key, element index) hash, as in fusedlr/_precision.py."""
    inner = _hash32(key + (index >> 32).to(tl.uint32))
    noise = _hash32(index.to(tl.uint32) ^ inner) & 0xFFFF
    return _bf16_from_bits(value.to(tl.uint32, bitcast=True) + noise, value)


@triton.jit
def _store(ptr, offs, value, mask, MASKED: tl.constexpr):
    if MASKED:
        tl.store(ptr + offs, _round(value, ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(ptr + offs, _round(value, ptr.dtype.element_ty))


@triton.jit
def _load_signed(codes, scales, offs, index, mask, QBLOCK: tl.constexpr, MASKED: tl.constexpr):
    """Decode 8-bit first moments (fusedlr/_quantized.py, ``dequantize_signed``)."""
    y = _load(codes, offs, mask, tl.float32, MASKED) * (1.0 / SIGNED_LEVELS)
    scale = _load(scales, index // QBLOCK, mask, tl.float32, MASKED)
    return tl.div_rn(y, 2.0 - tl.abs(y)) * scale


@triton.jit
def _load_unsigned(codes, scales, offs, index, mask, QBLOCK: tl.constexpr, MASKED: tl.constexpr):
    """Decode 8-bit second moments (``dequantize_unsigned``): the square of the decoded root."""
    r = _load(scales, index // QBLOCK, mask, tl.float32, MASKED) * (
        _load(codes, offs, mask, tl.float32, MASKED) * (1.0 / UNSIGNED_LEVELS)
    )
    return r * r


@triton.jit
def _block_max(x):
    """Each row's maximum, NaN if the row holds one (as torch's amax and the CUDA kernel): tl.max
    skips NaNs on a GPU (its interpreter does not), which left a NaN moment's block a finite
    scale and the NaN's code whatever the cast made of it. (A reduce with a NaN-propagating
    combine does the same but runs 20x slower under the interpreter.)"""
    has_nan = tl.max((x != x).to(tl.int32), axis=1) > 0
    return tl.where(has_nan, float("nan"), tl.max(x, axis=1))


@triton.jit
def _store_scales(scales, index, mask, scale, QBLOCK: tl.constexpr):
    """One float32 scale per row of the ``[rows, QBLOCK]`` tile (rows with no element skipped)."""
    rows = tl.min(index, axis=1) // QBLOCK
    tl.store(scales + rows, scale, mask=tl.max(mask.to(tl.int32), axis=1) > 0)


@triton.jit
def _store_signed(codes, scales, offs, index, mask, value, decaying, QBLOCK: tl.constexpr, MASKED: tl.constexpr):
    """Encode a ``[rows, QBLOCK]`` tile of first moments (``quantize_signed``): to nearest, or
    toward zero where ``decaying``."""
    value = tl.where(mask, value, 0.0)
    scale = _block_max(tl.abs(value))
    x = tl.div_rn(value, tl.where(scale > 0.0, scale, 1.0)[:, None])
    y = tl.div_rn(x * 2.0, tl.abs(x) + 1.0)
    magnitude = tl.floor(tl.abs(y) * SIGNED_LEVELS + tl.where(decaying, SIGNED_SLACK, 0.5))
    code = tl.where(y < 0.0, -magnitude, magnitude).to(tl.int8)
    if MASKED:
        tl.store(codes + offs, code, mask=mask)
    else:
        tl.store(codes + offs, code)
    _store_scales(scales, index, mask, scale, QBLOCK)


@triton.jit
def _store_unsigned(codes, scales, offs, index, mask, value, QBLOCK: tl.constexpr, MASKED: tl.constexpr):
    """Encode a ``[rows, QBLOCK]`` tile of second moments (``quantize_unsigned``): their roots."""
    r = tl.sqrt_rn(tl.where(mask, value, 0.0))
    scale = _block_max(r)
    code = tl.floor(tl.div_rn(r, tl.where(scale > 0.0, scale, 1.0)[:, None]) * UNSIGNED_LEVELS + 0.5)
    code = tl.where((code == 0.0) & (r > 0.0), 1.0, code).to(tl.uint8)  # never 0 for v > 0: no m / eps
    if MASKED:
        tl.store(codes + offs, code, mask=mask)
    else:
        tl.store(codes + offs, code)
    _store_scales(scales, index, mask, scale, QBLOCK)


@triton.jit
def _load_split(param, residual, offs, mask, MASKED: tl.constexpr):
    """The float32 weight of a bf16 param and its int8 residual (fusedlr/_split_master.py,
    ``reconstruct``): bits(p) << 16 plus 256 residual units, in integer arithmetic."""
    if MASKED:
        p = tl.load(param + offs, mask=mask, other=0.0)
        e = tl.load(residual + offs, mask=mask, other=0)
    else:
        p = tl.load(param + offs)
        e = tl.load(residual + offs)
    bits = (p.to(tl.int16, bitcast=True).to(tl.int32) << 16) + e.to(tl.int32) * 256
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _store_split(param, residual, offs, value, mask, MASKED: tl.constexpr):
    """Write ``value`` as the bf16 param and the int8 residual (``split``): rounded to 24 bits,
    then the upper 16 as the param (to nearest, ties up) and the rest, in [-128, 127], as ``e``."""
    bits = value.to(tl.uint32, bitcast=True)
    q = ((bits + 128) >> 8).to(tl.int32, bitcast=True)  # < 2**24 (NaNs aside)
    high = ((bits + 0x8080) >> 16).to(tl.int32, bitcast=True)  # (q + 128) >> 8
    e = tl.where(value != value, 0, q - (high << 8)).to(tl.int8)
    p = _bf16_from_bits(bits + 0x8080, value)
    if MASKED:
        tl.store(param + offs, p, mask=mask)
        tl.store(residual + offs, e, mask=mask)
    else:
        tl.store(param + offs, p)
        tl.store(residual + offs, e)


@triton.jit
def _update_block(
    param, master, grad, exp_avg, exp_avg_sq, max_sq, offs, mask, index, sr_key,
    grad_scale, decay, step_size, bc2_sqrt, beta1, w1, beta2, w2, eps, unscale, clip_value,
    exp_avg_scales, exp_avg_sq_scales, residual,
    COMPUTE: tl.constexpr, IS_FP64: tl.constexpr, RULE: tl.constexpr, HAS_MAX: tl.constexpr,
    MASTER: tl.constexpr, STOCHASTIC: tl.constexpr, MASKED: tl.constexpr, HAS_CLIP_VALUE: tl.constexpr,
    QUANTIZED: tl.constexpr, QBLOCK: tl.constexpr, SPLIT_MASTER: tl.constexpr,
):  # fmt: skip
    """One block of the AdamW, LION, SGD or schedule-free update (unmasked for the full blocks of
    a chunk): loads widened to COMPUTE, one rounding per stored value. QUANTIZED (AdamW, LION):
    the moments are 8-bit codes with a scale per QBLOCK elements, decoded and encoded here;
    ``offs`` is then a ``[rows, QBLOCK]`` tile, one quantisation block per row."""
    g = _load(grad, offs, mask, COMPUTE, MASKED)
    if HAS_CLIP_VALUE:
        g = _clamp(g * unscale, clip_value)
    g = g * grad_scale
    if MASTER:
        p = _load(master, offs, mask, COMPUTE, MASKED)
    elif SPLIT_MASTER:
        p = _load_split(param, residual, offs, mask, MASKED)
    else:
        p = _load(param, offs, mask, COMPUTE, MASKED)
    if RULE != RULE_SCHEDULEFREE:
        p = p * decay
    if RULE != RULE_SGD:  # SGD loads its momentum buffer only where it has one
        if QUANTIZED:
            m = _load_signed(exp_avg, exp_avg_scales, offs, index, mask, QBLOCK, MASKED)
        else:
            m = _load(exp_avg, offs, mask, COMPUTE, MASKED)
    if RULE == RULE_ADAMW:
        if QUANTIZED:
            v = _load_unsigned(exp_avg_sq, exp_avg_sq_scales, offs, index, mask, QBLOCK, MASKED)
        else:
            v = _load(exp_avg_sq, offs, mask, COMPUTE, MASKED)
        # torch's lerp(m, g, w): two forms, picked by |w| < 0.5, for accuracy at both ends.
        m = tl.where(w1 < 0.5, m + w1 * (g - m), g - (g - m) * (1.0 - w1))
        v = v * beta2 + w2 * g * g
        v_hat = v
        if HAS_MAX:
            v_hat = tl.maximum(_load(max_sq, offs, mask, COMPUTE, MASKED), v)
            _store(max_sq, offs, v_hat, mask, MASKED)
        # IEEE square root and division, as torch's kernels (Triton's defaults are approximate).
        if IS_FP64:
            p = p - step_size * (m / (tl.sqrt(v_hat) / bc2_sqrt + eps))
        else:
            p = p - step_size * tl.div_rn(m, tl.div_rn(tl.sqrt_rn(v_hat), bc2_sqrt) + eps)
        if QUANTIZED:
            _store_unsigned(exp_avg_sq, exp_avg_sq_scales, offs, index, mask, v, QBLOCK, MASKED)
        else:
            _store(exp_avg_sq, offs, v, mask, MASKED)
    elif RULE == RULE_SGD:
        g = g + eps * p  # coupled weight decay (eps holds it; decay is 1 then)
        direction = g
        if w2 != 0.0:  # the tensor has a momentum buffer
            m = _load(exp_avg, offs, mask, COMPUTE, MASKED)
            m = m * beta1 + w1 * g
            direction = tl.where(beta2 != 0.0, g + beta2 * m, m)  # nesterov, or the buffer
            _store(exp_avg, offs, m, mask, MASKED)
        p = p - step_size * direction
    elif RULE == RULE_SCHEDULEFREE:
        # p is y, m is z; eps, bc2_sqrt (the bias correction), beta1 (ckp1), w1 (y's step): see above.
        v = _load(exp_avg_sq, offs, mask, COMPUTE, MASKED)
        v = v * beta2 + w2 * g * g
        if IS_FP64:
            normalized = g / (tl.sqrt(v / bc2_sqrt) + eps)
        else:
            normalized = tl.div_rn(g, tl.sqrt_rn(tl.div_rn(v, bc2_sqrt)) + eps)
        normalized = normalized + decay * p  # weight decay at y
        p = tl.where(beta1 < 0.5, p + beta1 * (m - p), m - (m - p) * (1.0 - beta1))  # lerp(y, z, ckp1)
        p = p + w1 * normalized
        m = m - step_size * normalized
        _store(exp_avg_sq, offs, v, mask, MASKED)
    else:
        update = m * beta1 + w1 * g
        direction = tl.where(update > 0.0, 1.0, tl.where(update < 0.0, -1.0, 0.0)).to(COMPUTE)
        p = p - step_size * direction
        m = m * beta2 + w2 * g
    if MASTER:
        _store(master, offs, p, mask, MASKED)
    if SPLIT_MASTER:
        _store_split(param, residual, offs, p, mask, MASKED)
    elif STOCHASTIC:
        rounded = _round_stochastically(p, sr_key, index)
        if MASKED:
            tl.store(param + offs, rounded, mask=mask)
        else:
            tl.store(param + offs, rounded)
    else:
        _store(param, offs, p, mask, MASKED)
    if RULE != RULE_SGD:
        if QUANTIZED:
            decaying = (g == 0.0) & (RULE == RULE_ADAMW)  # toward zero (_quantized.py says why)
            _store_signed(exp_avg, exp_avg_scales, offs, index, mask, m, decaying, QBLOCK, MASKED)
        else:
            _store(exp_avg, offs, m, mask, MASKED)


@triton.jit
def _update_kernel(
    tensor_table,
    num_tensors,
    chunk_table,
    num_chunks,
    chunk_base,
    coef,
    status,
    ELEM: tl.constexpr,
    GRAD_ELEM: tl.constexpr,
    STATE_ELEM: tl.constexpr,
    COMPUTE: tl.constexpr,
    IS_FP64: tl.constexpr,
    RULE: tl.constexpr,
    HAS_MAX: tl.constexpr,
    MASTER: tl.constexpr,
    STOCHASTIC: tl.constexpr,
    ALIGNED: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK: tl.constexpr,
    HAS_CLIP_VALUE: tl.constexpr,
    QUANTIZED: tl.constexpr,
    QBLOCK: tl.constexpr,
    SPLIT_MASTER: tl.constexpr,
):
    """The update of one chunk by RULE (_plan.RULES), with the finalize's coefficients.
    HAS_MAX: amsgrad's running maximum; MASTER: the update runs on the fp32 master copy and
    writes the param rounded from it; SPLIT_MASTER: the update runs on the float32 weight that the
    bf16 param and its int8 residual stand for and writes both back; STOCHASTIC: the bfloat16 param is written with stochastic
    rounding; QUANTIZED: 8-bit moments with a float32 scale per QBLOCK elements (a power of two
    that divides CHUNK and BLOCK: blocks start at multiples of QBLOCK in the tensor). A bucket
    holds tensors alike in all of these."""
    c = chunk_base + tl.program_id(0)
    t, start, length = _chunk_extent(tensor_table, num_tensors, chunk_table, num_chunks, c, CHUNK)
    length = tl.where(tl.load(status) != 0.0, 0, length)  # the finalize skipped this step
    param = _address(tensor_table, T_PARAM, num_tensors, t, ELEM) + start
    master = _address(tensor_table, T_MASTER, num_tensors, t, tl.float32) + start  # MASTER only
    grad = _address(tensor_table, T_GRAD, num_tensors, t, GRAD_ELEM) + start
    exp_avg = _address(tensor_table, T_EXP_AVG, num_tensors, t, STATE_ELEM) + start
    exp_avg_sq = _address(tensor_table, T_EXP_AVG_SQ, num_tensors, t, STATE_ELEM) + start  # AdamW, schedule-free
    max_sq = _address(tensor_table, T_MAX_EXP_AVG_SQ, num_tensors, t, STATE_ELEM) + start  # HAS_MAX only
    exp_avg_scales = _address(tensor_table, T_EXP_AVG_SCALES, num_tensors, t, tl.float32)  # QUANTIZED only
    exp_avg_sq_scales = _address(tensor_table, T_EXP_AVG_SQ_SCALES, num_tensors, t, tl.float32)
    residual = _address(tensor_table, T_MASTER_RESIDUAL, num_tensors, t, tl.int8) + start  # SPLIT_MASTER only
    if QUANTIZED:  # the codes: int8 for the signed first moment, uint8 for the second
        exp_avg = _address(tensor_table, T_EXP_AVG, num_tensors, t, tl.int8) + start
        exp_avg_sq = _address(tensor_table, T_EXP_AVG_SQ, num_tensors, t, tl.uint8) + start
    if ALIGNED:
        # Every address of the bucket is a multiple of 16 bytes (checked by the launcher): with
        # the unmasked full blocks below, loads and stores move 16 bytes. Inline on purpose: the
        # hint does not survive being returned from a helper.
        param = tl.multiple_of(param, 16)
        master = tl.multiple_of(master, 16)
        grad = tl.multiple_of(grad, 16)
        exp_avg = tl.multiple_of(exp_avg, 16)
        exp_avg_sq = tl.multiple_of(exp_avg_sq, 16)
        max_sq = tl.multiple_of(max_sq, 16)
    grad_scale = _coef(coef, C_GRAD_SCALE, num_tensors, t, COMPUTE)
    decay = _coef(coef, C_DECAY, num_tensors, t, COMPUTE)
    step_size = _coef(coef, C_STEP_SIZE, num_tensors, t, COMPUTE)  # LION: the lr
    bc2_sqrt = _coef(coef, C_BC2_SQRT, num_tensors, t, COMPUTE)
    beta1 = _coef(coef, C_BETA1, num_tensors, t, COMPUTE)
    w1 = _coef(coef, C_ONE_MINUS_BETA1, num_tensors, t, COMPUTE)
    beta2 = _coef(coef, C_BETA2, num_tensors, t, COMPUTE)
    w2 = _coef(coef, C_ONE_MINUS_BETA2, num_tensors, t, COMPUTE)
    eps = _coef(coef, C_EPS, num_tensors, t, COMPUTE)
    sr_key = tl.load(coef + C_SR_KEY * num_tensors + t).to(tl.uint32)
    unscale = grad_scale
    clip_value = grad_scale
    if HAS_CLIP_VALUE:  # clip_grad_value_ in registers: unscale, clamp, then the scales above
        unscale = _coef(coef, C_UNSCALE, num_tensors, t, COMPUTE)
        clip_value = _coef(coef, C_CLIP_VALUE, num_tensors, t, COMPUTE)
    full = (length // BLOCK) * BLOCK
    for i in range(0, full, BLOCK):
        offs = i + _block_offsets(BLOCK, QBLOCK, QUANTIZED)
        _update_block(param, master, grad, exp_avg, exp_avg_sq, max_sq, offs, offs < length, start + offs, sr_key,
                      grad_scale, decay, step_size, bc2_sqrt, beta1, w1, beta2, w2, eps, unscale, clip_value,
                      exp_avg_scales, exp_avg_sq_scales, residual,
                      COMPUTE, IS_FP64, RULE, HAS_MAX, MASTER, STOCHASTIC, False, HAS_CLIP_VALUE,
                      QUANTIZED, QBLOCK, SPLIT_MASTER)  # fmt: skip
    offs = full + _block_offsets(BLOCK, QBLOCK, QUANTIZED)
    _update_block(param, master, grad, exp_avg, exp_avg_sq, max_sq, offs, offs < length, start + offs, sr_key,
                  grad_scale, decay, step_size, bc2_sqrt, beta1, w1, beta2, w2, eps, unscale, clip_value,
                  exp_avg_scales, exp_avg_sq_scales, residual,
                  COMPUTE, IS_FP64, RULE, HAS_MAX, MASTER, STOCHASTIC, True, HAS_CLIP_VALUE,
                  QUANTIZED, QBLOCK, SPLIT_MASTER)  # fmt: skip


@triton.jit
def _block_offsets(BLOCK: tl.constexpr, QBLOCK: tl.constexpr, QUANTIZED: tl.constexpr):
    """Offsets of one BLOCK of elements: flat, or as a [BLOCK // QBLOCK, QBLOCK] tile whose rows
    are quantisation blocks (the same elements, in the same memory order)."""
    if QUANTIZED:
        rows = tl.arange(0, BLOCK // QBLOCK).to(tl.int64)[:, None] * QBLOCK
        return rows + tl.arange(0, QBLOCK).to(tl.int64)[None, :]
    else:
        return tl.arange(0, BLOCK).to(tl.int64)


@triton.jit
def _schedule_values_kernel(sched, ks, out_scale, out_offset, REGISTERS: tl.constexpr):
    """The schedule program in ``sched`` (SCHEDULE_SLOTS then the program) run at update
    ``ks[i]`` by program i: the same device evaluation the finalize does, for checks and previews."""
    i = tl.program_id(0)
    scale, offset = _run_schedule_program(sched, tl.load(ks + i).to(tl.float64), REGISTERS)
    tl.store(out_scale + i, scale)
    tl.store(out_offset + i, offset)
