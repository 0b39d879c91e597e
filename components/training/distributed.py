"""The processes one training run is made of: one without torchrun, WORLD_SIZE of them under it.

`torchrun --nproc-per-node N sign2text train ...` sets RANK, WORLD_SIZE, LOCAL_RANK and the
rendezvous address; `start` joins the group (NCCL on GPU, gloo on CPU) and picks this process's
device. Every collective here is a no-op in a single process, so training reads the same either
way. Kubeflow Trainer's torch runtime sets PET_NNODES etc., which torchrun reads as defaults.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from model.runtimes.torch_runtime import resolve_device

# Rank 0 validates and writes checkpoints while the others wait: generous, but a hung peer
# still ends the job instead of holding its GPUs forever.
TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class Group:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The process that writes files and prints."""
        return self.rank == 0

    def all_sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=_collective_device())
        dist.all_reduce(t)
        return t.tolist()

    def gather(self, obj) -> list:
        """Every rank's `obj`, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def start(device_name: str) -> tuple[Group, torch.device]:
    """Join the process group torchrun describes (or none) -> (group, this process's device).

    `device_name` is train.device: "auto" picks CUDA when there is one."""
    device = resolve_device(device_name)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Group(), device
    cuda = device.type == "cuda"  # each rank then takes the GPU of its local rank
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    group = Group(dist.get_rank(), dist.get_world_size(), local)
    return group, torch.device("cuda", local) if cuda else torch.device("cpu")


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _collective_device() -> torch.device:
    return torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")


@torch.no_grad()
def average_batchnorm(model: torch.nn.Module, group: Group, weight: float) -> None:
    """Make every rank's BatchNorm statistics the average of all ranks' (each weighted by
    `weight`, the batches it averaged over), as if one process had seen every rank's clips."""
    if group.world == 1:
        return
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    flat = torch.cat([t for m in bns for t in (m.running_mean, m.running_var)]).double()
    total = torch.tensor([weight], dtype=torch.float64)
    device = _collective_device()
    flat, total = (flat * weight).to(device), total.to(device)
    dist.all_reduce(flat)
    dist.all_reduce(total)
    flat = (flat / total).cpu()
    i = 0
    for m in bns:
        for t in (m.running_mean, m.running_var):
            t.copy_(flat[i : i + t.numel()].to(t))
            i += t.numel()
