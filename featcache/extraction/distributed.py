"""Extraction under torchrun: each rank takes a disjoint share of the missing rows.

``torchrun --nproc_per_node N -m featcache extract ...`` sets RANK, WORLD_SIZE and
LOCAL_RANK; featcache then joins the process group (gloo on CPU, nccl on CUDA),
rank 0 decides which rows are missing and broadcasts the list, rank r extracts
rows ``todo[r::world]`` into its own row shards (no two processes ever write one
file), and rank 0 publishes the view once every rank is done. A rank that dies
leaves only complete, published shards behind, so re-running the same command
resumes like a single-process run.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as td


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast(self, obj):
        """rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.active:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()


def from_env(device: torch.device) -> Dist:
    """Join the torchrun process group when launched by torchrun, else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not td.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        td.init_process_group(backend=backend)
    return Dist(rank=td.get_rank(), world=td.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def rank_device(device: torch.device, dist: Dist) -> torch.device:
    """On CUDA, rank r of a node uses GPU LOCAL_RANK (unless a GPU index was given)."""
    if dist.active and device.type == "cuda" and device.index is None:
        torch.cuda.set_device(dist.local_rank)
        return torch.device("cuda", dist.local_rank)
    return device
