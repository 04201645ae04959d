"""FSDP2 training with fusedlr: the fused step on each rank's shards, one global norm.

    torchrun --nproc_per_node=2 examples/train_fsdp.py [--steps 50] [--optimizer lion]
             [--checkpoint DIR]

Runs on GPUs with NCCL (one per rank) or on CPU with gloo. Each rank trains on its share of a
synthetic batch; fusedlr clips by the norm of the whole model (one all_reduce of the per-tensor
sums of squares, no host sync), follows a warmup-cosine schedule on the device, and updates the
local shards. With ``--checkpoint`` the run saves a DCP checkpoint halfway and the rest of the
run is repeated from it, to show a resume that gives the same numbers.
"""

import argparse
import os

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

import fusedlr
from fusedlr.schedules import WarmupCosine


def make_model(device):
    torch.manual_seed(0)
    blocks = [nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64)) for _ in range(4)]
    return nn.Sequential(*blocks, nn.Linear(64, 10)).to(device)


def shard(model, mesh):
    for block in model:
        fully_shard(block, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def make_optimizer(model, args):
    schedule = WarmupCosine(warmup_steps=args.steps // 10, total_steps=args.steps)
    if args.optimizer == "lion":
        return fusedlr.Lion(model.parameters(), lr=3e-4, weight_decay=0.1, schedule=schedule, max_grad_norm=1.0)
    return fusedlr.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1, schedule=schedule, max_grad_norm=1.0)


def train(model, opt, steps, device, log):
    rank, world = dist.get_rank(), dist.get_world_size()
    for step in steps:
        generator = torch.Generator().manual_seed(step)  # the same global batch on every rank
        x, y = torch.randn(64, 64, generator=generator), torch.randint(0, 10, (64,), generator=generator)
        mine = slice(rank * 64 // world, (rank + 1) * 64 // world)
        loss = nn.functional.cross_entropy(model(x[mine].to(device)), y[mine].to(device))
        loss.backward()
        opt.step()
        opt.zero_grad()
        if log and step % 10 == 0 and rank == 0:
            print(f"step {step:4d}  loss {loss.item():.4f}  grad norm {opt.last_grad_norm.item():.4f}")
    return loss.detach()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--optimizer", choices=["adamw", "lion"], default="adamw")
    parser.add_argument("--checkpoint", default=None, help="a folder for a DCP checkpoint")
    args = parser.parse_args()
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if use_cuda else "gloo")
    device = torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))

    model = shard(make_model(device), mesh)
    opt = make_optimizer(model, args)
    half = args.steps // 2
    train(model, opt, range(half), device, log=True)
    if args.checkpoint:
        model_sd, optim_sd = get_state_dict(model, opt)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=args.checkpoint)
    final = train(model, opt, range(half, args.steps), device, log=True)

    if args.checkpoint:  # a new model and optimizer resume from the checkpoint
        model = shard(make_model(device), mesh)
        opt = make_optimizer(model, args)
        model_sd, optim_sd = get_state_dict(model, opt)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=args.checkpoint)
        set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
        resumed = train(model, opt, range(half, args.steps), device, log=False)
        if dist.get_rank() == 0:
            print(f"final loss {final.item():.6f}; resumed from the checkpoint: {resumed.item():.6f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
