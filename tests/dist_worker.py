"""Multi-process scenarios for tests/test_distributed.py: each rank of a gloo group trains a small
MLP with fusedlr under one of torch's engines (DDP, FSDP2, HSDP, tensor parallel, FSDP2 + TP,
pipeline-style stages with ``norm_group``) and compares itself with an unsharded single-process
reference that every rank computes on its own: ``torch.optim.AdamW(foreach=False)`` (or
lion-pytorch's Lion) + ``clip_grad_norm_`` + ``LambdaLR`` on the full batch. Results go to one
JSON file per rank; the test asserts on them.

Run by ``torch.multiprocessing.spawn(run, ...)``; nothing here runs at import.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import traceback

import torch
import torch.distributed as dist
from torch import nn

STEPS = 4
BATCH = 16
MAX_GRAD_NORM = 0.5
SETTINGS = {
    "adamw": dict(lr=0.05, betas=(0.9, 0.99), weight_decay=0.1),
    "lion": dict(lr=0.01, betas=(0.9, 0.99), weight_decay=0.1),
}


def make_model() -> nn.Sequential:
    torch.manual_seed(0)
    # 5 outputs: the last layer's rows do not split evenly over 2 or 4 ranks.
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 5))


def batch(step: int):
    generator = torch.Generator().manual_seed(100 + step)
    return torch.randn(BATCH, 8, generator=generator), torch.randn(BATCH, 5, generator=generator)


def lr_lambda(step: int) -> float:  # Hugging Face's cosine with 2 warmup steps over 8, written out
    import math

    if step < 2:
        return step / 2
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * (step - 2) / 6)))


def schedule():
    from fusedlr.schedules import WarmupCosine

    return WarmupCosine(warmup_steps=2, total_steps=8)


AGC_FACTOR = 0.05


def reference(kind: str, steps: int = STEPS, agc: bool = False):
    """The unsharded run: full params by name and the norm clip_grad_norm_ reported each step
    (after the seed guide's AGC, with ``agc``)."""
    model = make_model()
    params = list(model.parameters())
    if kind == "adamw":
        opt = torch.optim.AdamW(params, eps=1e-8, foreach=False, **SETTINGS[kind])
    else:
        from lion_pytorch import Lion

        opt = Lion(params, **SETTINGS[kind])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    norms = []
    for step in range(steps):
        x, y = batch(step)
        nn.functional.mse_loss(model(x), y).backward()
        if agc:
            from oracles import adaptive_clip_grad

            adaptive_clip_grad(params, AGC_FACTOR)
        norms.append(float(torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM, foreach=False)))
        opt.step()
        sched.step()
        opt.zero_grad()
    return {name: p.detach().clone() for name, p in model.named_parameters()}, norms


def fused(kind, params, backend, **options):
    import fusedlr

    cls = fusedlr.AdamW if kind == "adamw" else fusedlr.Lion
    return cls(params, schedule=schedule(), max_grad_norm=MAX_GRAD_NORM, backend=backend, **SETTINGS[kind], **options)


def full(tensor) -> torch.Tensor:
    from fusedlr._distributed import is_dtensor

    return (tensor.full_tensor() if is_dtensor(tensor) else tensor).detach()


def train(model, opt, rows, steps=range(STEPS), after_step=None):
    """Steps of ``model`` on this rank's ``rows`` of each batch; per step the norm and the number
    of collectives that opt.step() issued."""
    from torch.distributed.tensor.debug import CommDebugMode

    norms, collectives = [], []
    for step in steps:
        x, y = batch(step)
        nn.functional.mse_loss(model(x[rows]), y[rows]).backward()
        with CommDebugMode() as comm:
            opt.step()
        collectives.append(comm.get_total_counts())
        norms.append(float(opt.last_grad_norm))
        opt.zero_grad()
        if after_step is not None:
            after_step()
    return norms, collectives


def compare(kind, model, norms, collectives, names=None, agree=None, agc=False):
    """What the test asserts: errors against the reference and agreement across ranks."""
    ref_params, ref_norms = reference(kind, agc=agc)
    ours = {name: full(p) for name, p in model.named_parameters()}
    names = names or list(ours)
    param_err = max(float((ours[n] - ref_params[n]).abs().max()) for n in names)
    gathered = [None] * dist.get_world_size()
    fingerprint = ([n.hex() for n in norms], {n: ours[n].numpy().tobytes().hex() for n in agree or names})
    dist.all_gather_object(gathered, fingerprint)
    return {
        "param_err": param_err,
        "norm_err": max(abs(a - b) / b for a, b in zip(norms, ref_norms)),
        "collectives": collectives,
        "ranks_agree": all(g == gathered[0] for g in gathered),
    }


# ----- scenarios: each returns a dict of results --------------------------------------------------


def ddp(kind, backend):
    from torch.nn.parallel import DistributedDataParallel

    rank, world = dist.get_rank(), dist.get_world_size()
    model = DistributedDataParallel(make_model())
    opt = fused(kind, model.parameters(), backend)
    rows = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    norms, collectives = train(model, opt, rows)
    return compare(kind, model.module, norms, collectives)


def _mesh(shape, names):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh("cpu", shape, mesh_dim_names=names)


def _fsdp_model():
    from torch.distributed.fsdp import fully_shard

    mesh = _mesh((dist.get_world_size(),), ("dp",))
    model = make_model()
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def _own_rows():
    rank, world = dist.get_rank(), dist.get_world_size()
    return slice(rank * BATCH // world, (rank + 1) * BATCH // world)


def fsdp(kind, backend):
    model = _fsdp_model()
    opt = fused(kind, model.parameters(), backend)
    norms, collectives = train(model, opt, _own_rows())
    result = compare(kind, model, norms, collectives)
    state = opt.state[next(model.parameters())]
    result["states_are_dtensors"] = all(type(v).__name__ == "DTensor" for k, v in state.items() if k != "step")
    return result


def fsdp_agc(kind, backend):
    """AGC on sharded params: each tensor's AGC scale from its whole-tensor norms."""
    model = _fsdp_model()
    opt = fused(kind, model.parameters(), backend, agc_clip_factor=AGC_FACTOR)
    norms, collectives = train(model, opt, _own_rows())
    return compare(kind, model, norms, collectives, agc=True)


def found_inf(kind, backend):
    """A GradScaler's found_inf on one rank only, then a non-finite grad in one rank's shard with
    skip_nonfinite: every rank skips the step alike, and steps alike afterwards."""
    model = _fsdp_model()
    opt = fused(kind, model.parameters(), backend, skip_nonfinite=True)
    train(model, opt, _own_rows(), steps=range(1))
    before = {n: full(p).clone() for n, p in model.named_parameters()}
    rank = dist.get_rank()
    x, y = batch(1)
    nn.functional.mse_loss(model(x[_own_rows()]), y[_own_rows()]).backward()
    opt.grad_scale, opt.found_inf = torch.ones(()), torch.full((1,), 1.0 if rank == 0 else 0.0)
    opt.step()  # as GradScaler.step calls it, with the attributes set
    del opt.grad_scale, opt.found_inf
    skipped_found_inf = int(opt.skipped_steps)
    if rank == 1:
        next(model.parameters()).grad.to_local()[0, 0] = float("inf")
    opt.step()
    skipped_nonfinite = int(opt.skipped_steps) - skipped_found_inf
    unchanged = all(torch.equal(full(p), before[n]) for n, p in model.named_parameters())
    opt.zero_grad()
    norms, _ = train(model, opt, _own_rows(), steps=range(2, 3))
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (norms, {n: full(p).numpy().tobytes() for n, p in model.named_parameters()}))
    return {
        "skipped": [skipped_found_inf, skipped_nonfinite],
        "unchanged": unchanged,
        "counter": int(opt._schedule_step),
        "ranks_agree": all(g == gathered[0] for g in gathered),
    }


def hsdp(kind, backend):
    from torch.distributed.fsdp import fully_shard

    mesh = _mesh((2, 2), ("replicate", "shard"))
    model = make_model()
    fully_shard(model, mesh=mesh)  # a 2-D mesh: HSDP (replicate over dim 0, shard over dim 1)
    opt = fused(kind, model.parameters(), backend)
    rank = dist.get_rank()
    rows = slice(rank * BATCH // 4, (rank + 1) * BATCH // 4)
    norms, collectives = train(model, opt, rows)
    return compare(kind, model, norms, collectives)


def _tensor_parallel(model, mesh):
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    # Layer 0: weight and bias Shard(0); layer 2: weight Shard(1), bias Replicate; layer 4 stays plain.
    return parallelize_module(model, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})


def tp(kind, backend):
    model = _tensor_parallel(make_model(), _mesh((dist.get_world_size(),), ("tp",)))
    opt = fused(kind, model.parameters(), backend)
    norms, collectives = train(model, opt, slice(None))
    return compare(kind, model, norms, collectives)


def fsdp_tp(kind, backend):
    from torch.distributed.fsdp import fully_shard

    mesh = _mesh((2, 2), ("dp", "tp"))
    model = _tensor_parallel(make_model(), mesh["tp"])
    fully_shard(model, mesh=mesh["dp"])
    opt = fused(kind, model.parameters(), backend)
    dp = mesh.get_coordinate()[0]
    norms, collectives = train(model, opt, slice(dp * BATCH // 2, (dp + 1) * BATCH // 2))
    return compare(kind, model, norms, collectives)


def pipeline(kind, backend):
    """Two pipeline-style stages: rank 0 steps layers 0 and 2, rank 1 layer 4, each with its own
    optimizer, the norm summed over both (``norm_group``); layer 2's bias is also held and
    stepped by rank 1, a duplicate marked ``replicated`` so that it counts once."""
    rank = dist.get_rank()
    model = make_model()
    named = dict(model.named_parameters())
    stage = ["0.weight", "0.bias", "2.weight"] if rank == 0 else ["4.weight", "4.bias"]
    groups = [{"params": [named[n] for n in stage]}, {"params": [named["2.bias"]], "replicated": True}]
    opt = fused(kind, groups, backend, norm_group=dist.group.WORLD)

    def pass_stages_on():  # what a pipeline's forward would carry: each stage's new weights
        with torch.no_grad():
            for name, p in named.items():
                dist.broadcast(p, src=0 if name.startswith(("0.", "2.")) else 1)

    norms, collectives = train(model, opt, slice(None), after_step=pass_stages_on)
    result = compare(kind, model, norms, collectives, names=stage + ["2.bias"], agree=["2.bias"])
    # A deep copy shares the process group; pickling one to bytes is refused clearly.
    import copy
    import pickle

    twin = copy.deepcopy(opt)
    try:
        pickle.dumps(opt)
        refused = False
    except TypeError as error:
        refused = "norm_group" in str(error)
    result["copies"] = twin.norm_group is opt.norm_group and refused
    return result


def idle_stage(kind, backend):
    """A stage whose params get no grads on a step (frozen, or without a micro-batch) still
    joins the norm's collective: the other stage does not hang, and both report the global
    norm (then rank 0's stage alone); the idle stage's counter does not advance."""
    rank = dist.get_rank()
    model = make_model()
    named = dict(model.named_parameters())
    stage = ["0.weight", "0.bias", "2.weight", "2.bias"] if rank == 0 else ["4.weight", "4.bias"]
    opt = fused(kind, [named[n] for n in stage], backend, norm_group=dist.group.WORLD)
    norms, own = [], []
    for step in range(2):
        opt.zero_grad()
        x, y = batch(step)
        nn.functional.mse_loss(model(x), y).backward()
        if rank == 1 and step == 1:
            for name in stage:
                named[name].grad = None
        own.append(
            float(torch.stack([named[n].grad.norm() ** 2 for n in stage]).sum()) if rank == 0 or step == 0 else 0.0
        )
        opt.step()
        norms.append(float(opt.last_grad_norm))
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (norms, own))
    (norms0, own0), (norms1, own1) = gathered
    expected = [math.sqrt(a + b) for a, b in zip(own0, own1)]
    # Without norms, a GradScaler's found_inf is what the stages reduce: GradScaler sets it on
    # the idle stage too (the int 0: no grads to check), which then joins as well.
    import fusedlr

    cls = fusedlr.AdamW if kind == "adamw" else fusedlr.Lion
    scaled = cls([named[n] for n in stage], backend=backend, norm_group=dist.group.WORLD, **SETTINGS[kind])
    for step in range(3):
        scaled.zero_grad()
        x, y = batch(step)
        nn.functional.mse_loss(model(x), y).backward()
        idle = rank == 1 and step == 1
        if idle:
            for name in stage:
                named[name].grad = None
        scaled.found_inf = 0 if idle else torch.tensor([float(rank == 0 and step == 2)])
        scaled.step()
        del scaled.found_inf
    counters = [None] * dist.get_world_size()
    dist.all_gather_object(counters, (int(scaled._schedule_step), int(scaled.skipped_steps)))
    return {
        "norms_agree": norms0 == norms1,
        "global": all(math.isclose(n, e, rel_tol=1e-5) for n, e in zip(norms, expected)),
        "counter": int(opt._schedule_step),
        "scaled": counters,
    }


# ----- checkpoints through torch.distributed.checkpoint ---------------------------------------------

SHARED = {}  # "dir": a folder every world size's run sees (set by run)


def _full_states(opt, model):
    return {
        f"{name}.{key}": full(value).clone()
        for name, p in model.named_parameters()
        for key, value in opt.state[p].items()
    }


def _save(model, opt, path):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, opt)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=path)


def _load(model, opt, path):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, opt)  # makes the states (no step) to load into
    made_without_step = int(opt._schedule_step) == 0 and all(
        float(s["step"]) == 0 for s in opt.state.values() if "step" in s
    )
    assert opt.state and made_without_step, "get_state_dict must make the states without stepping"
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])


def dcp_save(kind, backend):
    """Save after 2 steps on this world size, go on 2 more; then a fresh model and optimizer
    resume from the checkpoint: the same 2 steps must give the same bits."""
    path = os.path.join(SHARED["dir"], f"{kind}-{backend}")
    model = _fsdp_model()
    opt = fused(kind, model.parameters(), backend)
    train(model, opt, _own_rows(), steps=range(2))
    _save(model, opt, path)
    saved_states = _full_states(opt, model)
    norms, _ = train(model, opt, _own_rows(), steps=range(2, STEPS))
    uninterrupted = {name: full(p).clone() for name, p in model.named_parameters()}
    if dist.get_rank() == 0:
        torch.save({"states": saved_states, "params": uninterrupted, "norms": norms}, path + ".pt")

    model = _fsdp_model()
    opt = fused(kind, model.parameters(), backend)
    _load(model, opt, path)
    counter = int(opt._schedule_step)
    resumed_norms, _ = train(model, opt, _own_rows(), steps=range(2, STEPS))
    resumed = {name: full(p) for name, p in model.named_parameters()}
    return {
        "counter": counter,
        "bitwise": all(torch.equal(resumed[n], uninterrupted[n]) for n in resumed) and resumed_norms == norms,
    }


def dcp_load(kind, backend):
    """Resume on this world size from dcp_save's checkpoint (saved on 2 ranks): the states as
    saved, the counter, and the next 2 steps as the 2-rank run took them (to rounding)."""
    path = os.path.join(SHARED["dir"], f"{kind}-{backend}")
    expected = torch.load(path + ".pt")
    model = _fsdp_model()
    opt = fused(kind, model.parameters(), backend)
    _load(model, opt, path)
    states = _full_states(opt, model)
    counter = int(opt._schedule_step)
    norms, _ = train(model, opt, _own_rows(), steps=range(2, STEPS))
    params = {name: full(p) for name, p in model.named_parameters()}
    return {
        "counter": counter,
        "states_equal": states.keys() == expected["states"].keys()
        and all(torch.equal(states[k], expected["states"][k]) for k in states),
        "param_err": max(float((params[n] - expected["params"][n]).abs().max()) for n in params),
        "norm_err": max(abs(a - b) / b for a, b in zip(norms, expected["norms"])),
    }


# ----- inputs that must be refused before anything changes ---------------------------------------


def _refused(opt, model, error, match, make_bad):
    """``make_bad()`` spoils an input; the step must raise ``error`` and change nothing."""
    import re

    before = {n: full(p).clone() for n, p in model.named_parameters()}
    states = _full_states(opt, model)
    counter = int(opt._schedule_step)
    make_bad()
    try:
        opt.step()
    except error as e:
        ok = re.search(match, str(e)) is not None
    else:
        ok = False
    after = {n: full(p) for n, p in model.named_parameters()}
    unchanged = all(torch.equal(after[n], before[n]) for n in after) and int(opt._schedule_step) == counter
    unchanged = unchanged and all(torch.equal(v, states[k]) for k, v in _full_states(opt, model).items())
    return ok and unchanged


def errors(kind, backend):
    from torch.distributed.tensor import DTensor, Partial

    model = _fsdp_model()
    params = list(model.parameters())
    opt = fused(kind, params, backend)
    train(model, opt, _own_rows(), steps=range(1))
    x, y = batch(1)
    results = {}

    def backward():
        opt.zero_grad()
        nn.functional.mse_loss(model(x[_own_rows()]), y[_own_rows()]).backward()

    backward()
    grad = params[0].grad
    results["plain_grad"] = _refused(
        opt, model, RuntimeError, "must be a DTensor", lambda: setattr(params[0], "grad", grad.full_tensor())
    )
    backward()
    partial = DTensor.from_local(params[0].grad.full_tensor(), params[0].device_mesh, [Partial()])
    results["partial_grad"] = _refused(
        opt, model, RuntimeError, "placements", lambda: setattr(params[0], "grad", partial)
    )
    backward()
    exp_avg = opt.state[params[1]]["exp_avg"]
    results["plain_state"] = _refused(
        opt,
        model,
        RuntimeError,
        "must be a DTensor",
        lambda: opt.state[params[1]].update(exp_avg=exp_avg.full_tensor()),
    )
    opt.state[params[1]]["exp_avg"] = exp_avg
    try:
        fused(kind, [{"params": params, "agc_clip_factor": 0.01}], backend, norm_group=dist.group.WORLD)
        results["agc_with_norm_group"] = False
    except ValueError:
        results["agc_with_norm_group"] = True
    # norm_group over the ranks that hold the same params' shards would count them twice.
    try:
        fused(kind, params, backend, norm_group=dist.group.WORLD)
        results["norm_group_over_the_mesh"] = False
    except ValueError as error:
        results["norm_group_over_the_mesh"] = "shares ranks" in str(error)
    # 8-bit moments do not reshard: refused when the optimizer is made, not at a first step.
    try:
        fused(kind, params, backend, state_dtype="int8")
        results["int8_at_construction"] = False
    except RuntimeError as error:
        results["int8_at_construction"] = "DTensor" in str(error)
    # The optimizer still works after every refusal.
    opt.step()
    results["steps_after"] = bool(torch.isfinite(opt.last_grad_norm))
    return results


SCENARIOS = {
    "errors": errors,
    "ddp": ddp,
    "fsdp": fsdp,
    "fsdp_agc": fsdp_agc,
    "found_inf": found_inf,
    "hsdp": hsdp,
    "tp": tp,
    "fsdp_tp": fsdp_tp,
    "pipeline": pipeline,
    "idle_stage": idle_stage,
    "dcp_save": dcp_save,
    "dcp_load": dcp_load,
}


CPU_BACKEND_SCENARIOS = ("fsdp", "pipeline")


def run(rank, world, port, out_dir, names, backends, shared_dir):
    SHARED["dir"] = shared_dir
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))
    torch.set_num_threads(1)
    results = {}
    try:
        for name in names:
            # The cpu backend (auto's choice for CPU tensors) falls back to the torch backend's
            # distributed norm: checked where a local norm would show.
            for backend in backends + (["cpu"] if name in CPU_BACKEND_SCENARIOS else []):
                for kind in ("adamw", "lion"):
                    try:
                        results[f"{name}-{kind}-{backend}"] = SCENARIOS[name](kind, backend)
                    except Exception:
                        results[f"{name}-{kind}-{backend}"] = {"error": traceback.format_exc()}
    finally:
        with open(os.path.join(out_dir, f"rank{rank}.json.tmp"), "w") as f:
            json.dump(results, f)
        os.replace(os.path.join(out_dir, f"rank{rank}.json.tmp"), os.path.join(out_dir, f"rank{rank}.json"))
        dist.destroy_process_group()
    # Leave without the interpreter's teardown: on the CI machine a gloo process was seen to abort
    # there now and then ("terminate called without an active exception", SIGABRT) after its
    # results were written. Only a clean return from every scenario gets here.
    os._exit(0)
