"""Sharded parameters and the one collective of a distributed step.

The update is elementwise, so a DTensor parameter (FSDP2, tensor parallel) is updated on its
local shard, with its state's local shards: no communication. Only the norms need the other
ranks. Each rank computes per-tensor sums of squares of its local shards (grads, and params for
AGC), as the single-device step does; ``NormReduction.reduce_`` then completes them in place:

1. over the params' device mesh, one ``all_reduce(SUM)`` of the whole vector (per-tensor sums,
   and the GradScaler's ``found_inf`` so that every rank skips alike). A rank whose coordinate
   is not 0 along a mesh dimension where a tensor is replicated sends 0 for it: replicas count
   once, as ``clip_grad_norm_`` on DTensors counts them;
2. with ``norm_group`` (pipeline stages, or model parallelism with plain tensors), the stage's
   total is summed over that group in a second ``all_reduce``, and handed to the finalize as
   the only non-zero entry of the grad row (the per-tensor values are not needed there: AGC,
   which would need them, is refused with ``norm_group``).

Nothing here reads a value on the host: the masks are device tensors built once per set of
tensors, so the step stays free of host synchronisation and capturable where the collective is.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist


def _dtensor_type():
    # No DTensor can exist before its module is imported: look it up without importing it.
    return getattr(sys.modules.get("torch.distributed.tensor"), "DTensor", None)


def is_dtensor(tensor) -> bool:
    cls = _dtensor_type()
    return cls is not None and isinstance(tensor, cls)


def local(tensor):
    """The local shard of a DTensor (the tensor itself otherwise): what the kernels address."""
    return tensor._local_tensor if is_dtensor(tensor) else tensor


def check_sharded(param, grad, state, name: str) -> None:
    """Raise before anything is touched when a DTensor param's grad or state does not share its
    mesh and placements (their local shards would not line up with the param's)."""
    spec = (param.device_mesh, tuple(param.placements))
    tensors = [("grad", grad)] + [(f"state {k!r}", v) for k, v in state.items() if k != "step"]
    for what, tensor in tensors:
        if not is_dtensor(tensor):
            raise RuntimeError(
                f"{name}: the {what} of a DTensor parameter is a plain {type(tensor).__name__}; it must be a DTensor "
                "with the parameter's mesh and placements (load sharded optimizer states with "
                "torch.distributed.checkpoint.state_dict.set_optimizer_state_dict)"
            )
        if (tensor.device_mesh, tuple(tensor.placements)) != spec:
            raise RuntimeError(
                f"{name}: the {what} of a DTensor parameter has placements {tuple(tensor.placements)} on "
                f"{tensor.device_mesh}; the parameter has {spec[1]} on {spec[0]}"
            )
        if any(p.is_partial() for p in tensor.placements):
            raise RuntimeError(
                f"{name}: the {what} of a parameter is a Partial DTensor (pending reduction); reduce it first"
            )


def _mesh_dims(mesh) -> tuple:
    names = mesh.mesh_dim_names
    return tuple(names) if names else tuple(range(mesh.ndim))


def _reference_mesh(meshes):
    """The mesh the per-tensor vector is reduced over: the one with the most dimensions, of
    which every other param's mesh must be a sub-mesh (named dimensions of the same root)."""
    largest = max(meshes, key=lambda m: m.ndim)
    for mesh in meshes:
        if mesh == largest:
            continue
        same_root = mesh._get_root_mesh() == largest._get_root_mesh()
        if not (same_root and mesh.mesh_dim_names and set(mesh.mesh_dim_names) <= set(largest.mesh_dim_names or ())):
            raise RuntimeError(
                f"fusedlr: parameters on device meshes {largest} and {mesh} that are not one inside the other; "
                "use one optimizer per mesh"
            )
    return largest


def _mesh_groups(mesh) -> list:
    """Process groups whose successive all_reduces sum over every rank of ``mesh``: the world
    (one collective) when the mesh spans it, else one per mesh dimension."""
    if mesh.size() == dist.get_world_size():
        return [dist.group.WORLD]
    return [mesh.get_group(d) for d in range(mesh.ndim)]


def _counts_here(param, mesh) -> bool:
    """Whether this rank adds ``param``'s local sum of squares to the mesh-wide sum: it does
    unless another rank holds the same values (a Replicate placement, a mesh dimension the param
    is not on, or a plain tensor), in which case only coordinate 0 of those dimensions does."""
    coordinate = dict(zip(_mesh_dims(mesh), mesh.get_coordinate()))
    if is_dtensor(param):
        # Shard and its variants (FSDP2 + TP's _StridedShard): anything but Replicate (Partial
        # was refused in check_sharded).
        placements = zip(_mesh_dims(param.device_mesh), param.placements)
        sharded = {dim for dim, placement in placements if not placement.is_replicate()}
    else:
        sharded = set()
    return all(index == 0 for dim, index in coordinate.items() if dim not in sharded)


class NormReduction:
    """Completes a step's per-tensor sums of squares across ranks (see the module docstring)."""

    def __init__(self, params, replicated, norm_group, device):
        """``params`` in the order of the sums' rows; ``replicated[i]``: params[i] is the same on
        every rank of ``norm_group`` (counted on its rank 0 only)."""
        meshes = {p.device_mesh for p in params if is_dtensor(p)}
        self.mesh_groups = []
        self.mesh_mask = None
        if meshes:
            mesh = _reference_mesh(list(meshes))
            self.mesh_groups = _mesh_groups(mesh)
            counts = [_counts_here(p, mesh) for p in params]
            if not all(counts):
                self.mesh_mask = torch.tensor(counts, dtype=torch.bool).to(device)
        self.norm_group = norm_group
        self.stage_mask = None
        if norm_group is not None and any(replicated) and dist.get_rank(norm_group) != 0:
            self.stage_mask = torch.tensor([not r for r in replicated], dtype=torch.bool).to(device)

    @property
    def active(self) -> bool:
        return bool(self.mesh_groups) or self.norm_group is not None

    def reduce_(self, sumsq: torch.Tensor, num_tensors: int, found_inf: torch.Tensor | None, norms: bool = True):
        """``sumsq``: float64 ``[2 * T + 1]`` on the device: per-tensor grad sums, param sums, and
        a free slot. Completes them in place; returns ``found_inf`` agreed by every rank (any
        rank's inf skips the step everywhere), or None. Without ``norms`` (no clip, AGC or
        non-finite check) only the found_inf slot is reduced."""
        T = num_tensors
        rows = sumsq[: 2 * T].view(2, T)
        if found_inf is not None:
            sumsq[2 * T].copy_(found_inf.reshape(()))
        else:
            sumsq[2 * T].zero_()
        if not norms:
            sumsq = sumsq[2 * T :]
            T = 0
            rows = None
        if self.mesh_groups:
            if self.mesh_mask is not None and rows is not None:
                rows.masked_fill_(~self.mesh_mask, 0.0)
            for group in self.mesh_groups:
                dist.all_reduce(sumsq, op=dist.ReduceOp.SUM, group=group)
        if self.norm_group is not None and rows is None:
            dist.all_reduce(sumsq, op=dist.ReduceOp.SUM, group=self.norm_group)
        elif self.norm_group is not None:
            grad_row = rows[0]
            kept = grad_row if self.stage_mask is None else torch.where(self.stage_mask, grad_row, 0.0)
            pair = torch.stack([kept.sum(), sumsq[2 * T]])
            dist.all_reduce(pair, op=dist.ReduceOp.SUM, group=self.norm_group)
            grad_row.zero_()
            grad_row[0] = pair[0]
            sumsq[2 * T] = pair[1]
        if found_inf is None:
            return None
        return (sumsq[2 * T] > 0).to(found_inf.dtype).reshape(found_inf.shape)


def check_stage_group(norm_group, meshes) -> None:
    """ValueError where ``norm_group`` holds other ranks of the params' own device meshes: those
    hold shards (or replicas) of the same params, which the mesh's reduction already sums, so
    the norm would count them again. norm_group is for ranks holding other params (stages)."""
    stage = set(dist.get_process_group_ranks(norm_group))
    me = dist.get_rank()
    for mesh in meshes:
        shared = (stage & set(mesh.mesh.flatten().tolist())) - {me}
        if shared:
            raise ValueError(
                f"norm_group (ranks {sorted(stage)}) shares ranks {sorted(shared)} with the parameters' device mesh "
                f"{mesh}: those ranks hold the same parameters, and the mesh's own reduction already sums them "
                "(the norm would count them twice). norm_group is for ranks holding other parameters (pipeline "
                "stages); leave it out with FSDP2, HSDP or tensor parallelism alone."
            )


def resolve_norm_group(norm_group):
    """A process group from ``norm_group`` (a ProcessGroup, or a 1-D DeviceMesh), or None."""
    if norm_group is None:
        return None
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("norm_group needs an initialised torch.distributed process group")
    from torch.distributed.device_mesh import DeviceMesh

    if isinstance(norm_group, DeviceMesh):
        if norm_group.ndim != 1:
            raise ValueError(f"norm_group must be a 1-D device mesh (slice it by name); got {norm_group}")
        return norm_group.get_group()
    if isinstance(norm_group, dist.ProcessGroup):
        return norm_group
    raise ValueError(f"Invalid norm_group: {norm_group!r} (a ProcessGroup or a 1-D DeviceMesh)")


class SharedGroup:
    """A process group inside an optimizer's pickled state: a deep copy shares it (a group is
    not copied); pickling to bytes is refused, as a group lives only in its own process."""

    def __init__(self, group):
        self.group = group

    def __deepcopy__(self, memo):
        return self

    def __reduce__(self):
        raise TypeError(
            "an optimizer with norm_group cannot be pickled: its process group exists only in this process; "
            "save opt.state_dict() instead"
        )
