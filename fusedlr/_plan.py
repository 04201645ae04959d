"""The multi-tensor plan: device tables that let a fixed number of launches cover any number
of tensors, built once and reused while the tensors stay where they are.

Tables (all on the params' device, built on the host once per plan):

* ``tensor_table``  int64 ``[len(TENSOR_COLUMNS), T]``: per tensor, the addresses of the param,
  its grad and its state tensors, its numel, its group index and its range of chunks;
* ``chunk_table``   int64 ``[2, C]``: per chunk, the tensor it belongs to and its first element.
  Chunks are ordered by dtype bucket, then tensor, so each bucket is one contiguous range and
  each tensor's chunks are contiguous (what makes the per-tensor reduction a fixed order);
* ``hyper``         float64: the per-group table ``[len(GROUP_COLUMNS), G]``, the clipping and
  schedule scalars (``SCHEDULE_SLOTS``), then the schedule's program. Uploaded only when its
  host value changes;
* workspaces for the norm partials, per-tensor sums of squares and per-tensor coefficients that
  the finalize launch writes for the update launch (``COEF_COLUMNS``).

Offsets are int64 everywhere: one tensor may hold more than 2**31 elements.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import _precision, _quantized, _split_master
from . import schedules as _schedules

_CONSTANT_PROGRAM = _schedules.Constant().program

TENSOR_COLUMNS = (
    "param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step",
    "numel", "group", "chunk_begin", "num_chunks",
    "master", "position",  # the fp32 master copy (0: none); the param's index among all params
    # 8-bit moments (fusedlr/_quantized.py): the float32 block scales; exp_avg / exp_avg_sq then
    # hold the addresses of the int8 / uint8 codes.
    "exp_avg_scales", "exp_avg_sq_scales",
    "master_residual",  # split master weights (fusedlr/_split_master.py): the int8 residuals
)  # fmt: skip
GROUP_COLUMNS = ("lr", "weight_decay", "beta1", "beta2", "eps", "agc_clip_factor", "agc_eps", "grad_sign", "seed")
# Then the schedule program (fusedlr/schedules/program.py), INSTRUCTION_WIDTH floats per instruction.
# Then the per-group hyperparameters of SGD (whose momentum sits in the beta1 column) and of
# schedule-free AdamW, laid out as the group columns (0 for the other kinds). Last in the table,
# after the schedule program, whose length varies.
RULE_GROUP_COLUMNS = ("dampening", "nesterov", "coupled_weight_decay", "warmup_steps", "r", "weight_lr_power")
# The update rule, a compile-time switch of the finalize and update kernels.
RULES = {"adamw": 0, "lion": 1, "sgd": 2, "schedulefree": 3}
# Rows of schedule-free's per-group device bookkeeping (AdamWScheduleFree._group_sums, float64
# [rows, G]), advanced by the finalize.
GROUP_SUM_ROWS = ("lr_max", "weight_sum", "ckp1", "scheduled_lr")
# The states each address column of TENSOR_COLUMNS holds, by kind: SGD's momentum buffer and
# schedule-free's z sit in the "exp_avg" column.
STATE_COLUMNS = {
    "exp_avg": ("exp_avg", "momentum_buffer", "z"),
    "exp_avg_sq": ("exp_avg_sq",),
    "max_exp_avg_sq": ("max_exp_avg_sq",),
}
SCHEDULE_SLOTS = (
    "host_multiplier", "max_grad_norm", "num_instructions", "scale_register", "offset_register",
    "clip_value",  # clamp of every grad element (0: off); read by the norm pass and the finalize
)  # fmt: skip
COEF_COLUMNS = (
    "grad_scale",
    "decay",
    "step_size",
    "bc2_sqrt",
    "beta1",
    "one_minus_beta1",
    "beta2",
    "one_minus_beta2",
    "eps",
    "sr_key",  # the key of this update's stochastic-rounding stream (a uint32 held in a float64)
    # With clip_value: the grad is unscaled (GradScaler) and clamped before grad_scale multiplies it.
    "unscale",
    "clip_value",
)

# Elements per chunk: one program of the norm and update kernels walks one chunk.
CHUNK_SIZE = 65536


@dataclass
class Bucket:
    """Tensors stored alike (param, grad and state dtypes, master copy, stochastic rounding):
    one norm-pass launch and one update launch, specialised for that storage."""

    dtype: torch.dtype
    chunk_begin: int
    chunk_end: int
    grad_dtype: torch.dtype = None
    state_dtype: torch.dtype = None
    master: bool = False
    stochastic: bool = False
    has_max: bool = False  # amsgrad
    quantized: bool = False  # 8-bit moments (state_dtype="int8")
    split_master: bool = False  # bf16 param + int8 residual (master_weights="split")
    # Every param, grad and state address of the bucket is a multiple of 16 bytes: the kernels
    # may then move 16 bytes per load and store (chunk starts keep that alignment).
    aligned: bool = True

    @property
    def num_chunks(self) -> int:
        return self.chunk_end - self.chunk_begin

    @property
    def storage(self) -> tuple:
        return (
            self.dtype,
            self.grad_dtype,
            self.state_dtype,
            self.master,
            self.stochastic,
            self.has_max,
            self.quantized,
            self.split_master,
        )


@dataclass
class Plan:
    key: tuple
    device: torch.device
    num_tensors: int
    num_groups: int
    tensor_table: torch.Tensor
    chunk_table: torch.Tensor
    buckets: list[Bucket]
    hyper: torch.Tensor
    partial_grad: torch.Tensor
    partial_param: torch.Tensor
    # Per-tensor sums of squares, [grads (T) | params (T) | one free slot]: one buffer, so that a
    # distributed step completes all of them (and a found_inf flag) in one collective.
    sumsq: torch.Tensor
    order: list[int]  # items' indices in table order
    coef: torch.Tensor
    status: torch.Tensor  # float32 [1]: 1 when the finalize skipped this step (found_inf, non-finite)
    hyper_key: tuple | None = field(default=None)

    @property
    def tensor_grad_sumsq(self) -> torch.Tensor:
        return self.sumsq[: self.num_tensors]

    @property
    def tensor_param_sumsq(self) -> torch.Tensor:
        return self.sumsq[self.num_tensors : 2 * self.num_tensors]


def storage(param, grad, group) -> tuple:
    """What a bucket specialises on, for one tensor (``Bucket.storage``'s order)."""
    return (
        param.dtype,
        grad.dtype,
        _precision.state_dtype(param, group),
        _precision.has_master(param, group),
        _precision.rounds_stochastically(param, group),
        bool(group.get("amsgrad")),
        _quantized.quantizes(param, group),
        _precision.has_split_master(param, group),
    )


_SCALE_KEYS = tuple(scales for _, scales, _ in _quantized.QUANTIZED_KEYS.values())


def _state_address(state: dict, name: str) -> int:
    """Address of state ``name``, or of its 8-bit codes when the moment is quantised; 0 if none."""
    if name not in state and name in _quantized.QUANTIZED_KEYS:
        name = _quantized.QUANTIZED_KEYS[name][0]
    return state[name].data_ptr() if name in state else 0


def build_plan(items, grads, groups, key, positions) -> Plan:
    """Build the tables for ``items`` (``(param, group, state)``) and their ``grads``, ordered by
    bucket; ``positions`` are the params' indices among all the optimizer's params."""
    device = items[0][0].device
    group_index = {id(g): i for i, g in enumerate(groups)}
    kinds = [storage(param, grad, group) for (param, group, _), grad in zip(items, grads)]
    order = sorted(range(len(items)), key=lambda i: str(kinds[i]))  # stable: keeps user order
    rows, chunk_tensor, chunk_start, buckets = [], [], [], []
    for t, i in enumerate(order):
        param, group, state = items[i]
        numel = param.numel()
        num_chunks = -(-numel // CHUNK_SIZE)
        if not buckets or buckets[-1].storage != kinds[i]:
            buckets.append(Bucket(param.dtype, len(chunk_tensor), len(chunk_tensor), *kinds[i][1:]))
        addresses = [param.data_ptr(), grads[i].data_ptr()]
        for column, names in STATE_COLUMNS.items():
            held = [name for name in names if name in state]
            addresses.append(_state_address(state, held[0] if held else column))
        master = state["master_param"].data_ptr() if "master_param" in state else 0
        if numel and any(address % 16 for address in addresses + [master]):
            buckets[-1].aligned = False
        step = state["step"].data_ptr() if "step" in state else 0
        rows.append(addresses + [step, numel, group_index[id(group)], len(chunk_tensor), num_chunks,
                                 master, positions[i]] + [_state_address(state, name) for name in _SCALE_KEYS]
                    + [_state_address(state, _split_master.RESIDUAL_KEY)])  # fmt: skip
        for c in range(num_chunks):
            chunk_tensor.append(t)
            chunk_start.append(c * CHUNK_SIZE)
        buckets[-1].chunk_end = len(chunk_tensor)

    def upload(host_rows, dtype):
        return torch.tensor(host_rows, dtype=dtype).to(device, non_blocking=True)

    num_tensors, num_chunks = len(rows), len(chunk_tensor)
    tensor_table = upload([list(col) for col in zip(*rows)], torch.int64)
    chunk_table = upload([chunk_tensor, chunk_start], torch.int64)
    f64 = dict(dtype=torch.float64, device=device)
    return Plan(
        key=key,
        device=device,
        num_tensors=num_tensors,
        num_groups=len(groups),
        tensor_table=tensor_table,
        chunk_table=chunk_table,
        buckets=buckets,
        hyper=torch.zeros(0, **f64),  # sized by upload_hyper: the schedule program's length varies
        partial_grad=torch.zeros(max(num_chunks, 1), **f64),
        partial_param=torch.zeros(max(num_chunks, 1), **f64),
        sumsq=torch.zeros(2 * num_tensors + 1, **f64),
        order=order,
        coef=torch.zeros(len(COEF_COLUMNS), num_tensors, **f64),
        status=torch.zeros(1, dtype=torch.float32, device=device),
    )


def hyper_values(groups, schedule, host_multiplier, max_grad_norm, clip_value=None) -> tuple:
    """The float64 host value of the ``hyper`` table, in its device layout."""
    per_group = {
        "lr": [g["lr"] for g in groups],
        "weight_decay": [g["weight_decay"] for g in groups],
        "beta1": [_betas(g)[0] for g in groups],
        "beta2": [_betas(g)[1] for g in groups],
        "eps": [g.get("eps", 0.0) for g in groups],
        "agc_clip_factor": [g["agc_clip_factor"] or 0.0 for g in groups],
        "agc_eps": [g["agc_eps"] for g in groups],
        "grad_sign": [-1.0 if g["maximize"] else 1.0 for g in groups],
        "seed": [g.get("seed", 0) for g in groups],
        "dampening": [g.get("dampening", 0.0) for g in groups],
        "nesterov": [float(bool(g.get("nesterov", False))) for g in groups],
        "coupled_weight_decay": [float(not g.get("decoupled_weight_decay", True)) for g in groups],
        "warmup_steps": [g.get("warmup_steps", 0) for g in groups],
        "r": [g.get("r", 0.0) for g in groups],
        "weight_lr_power": [g.get("weight_lr_power", 0.0) for g in groups],
    }
    # A tensor lr or beta is copied into the uploaded table on the device (copy_tensor_hypers):
    # its host value would cost a synchronisation, so the host table holds 0 in its place.
    rule_values = [_number(v) for name in RULE_GROUP_COLUMNS for v in per_group.pop(name)]
    values = [0.0 if isinstance(v, torch.Tensor) else _number(v) for name in GROUP_COLUMNS for v in per_group[name]]
    program = schedule.program if isinstance(schedule, _schedules.Schedule) else _CONSTANT_PROGRAM
    values += [1.0 if host_multiplier is None else float(host_multiplier)]
    values += [0.0 if max_grad_norm is None else float(max_grad_norm)]
    values += [float(len(program.instructions)), float(program.scale_register), float(program.offset_register)]
    values += [0.0 if clip_value is None else float(clip_value)]
    values += program.flat()
    values += rule_values
    return tuple(values)


def _betas(group) -> tuple:
    """The group's betas; for SGD (no betas) its momentum in the beta1 column."""
    return group["betas"] if "betas" in group else (group.get("momentum", 0.0), 0.0)


def _number(value) -> float:
    # float() would also take "0.1": a string in a param group is an error, as in the constructor.
    if isinstance(value, (str, bytes)):
        raise TypeError(f"a hyperparameter is a {type(value).__name__}, not a number: {value!r}")
    return float(value)


def upload_hyper(plan: Plan, values: tuple) -> None:
    if values != plan.hyper_key:
        if plan.hyper.numel() != len(values):
            plan.hyper = torch.empty(len(values), dtype=torch.float64, device=plan.device)
        plan.hyper.copy_(torch.tensor(values, dtype=torch.float64), non_blocking=True)
        plan.hyper_key = values


def copy_tensor_hypers(plan: Plan, groups) -> None:
    """Copy each tensor lr or beta into the uploaded table, on the device: no host read, and a
    CUDA graph that captured the step reads the tensor's value at every replay."""
    num_groups = len(groups)
    for g, group in enumerate(groups):
        beta1, beta2 = _betas(group)
        for column, value in (("lr", group["lr"]), ("beta1", beta1), ("beta2", beta2)):
            if isinstance(value, torch.Tensor):
                index = GROUP_COLUMNS.index(column) * num_groups + g
                plan.hyper[index : index + 1].copy_(value.detach().reshape(1), non_blocking=True)


def schedule_registers(schedule) -> int:
    """Register-file size for the device interpreter: a power of two above the program length."""
    program = schedule.program if isinstance(schedule, _schedules.Schedule) else _CONSTANT_PROGRAM
    return max(16, 1 << len(program.instructions).bit_length())
