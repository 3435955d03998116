"""Multi-process training through PyTorch's own engine (DDP), launched by ``torchrun``.

``torchrun --nproc_per_node N -m gcg.train ...`` sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT; ``init_distributed`` reads them and joins the process group (NCCL on CUDA, gloo on CPU).
Without those variables everything runs as a single process (rank 0 of 1). Only rank 0 writes files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group described by torchrun's environment variables (if any).

    ``device``: "auto" picks cuda:LOCAL_RANK when CUDA is available, else cpu; or an explicit device.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        dev = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and not torch_dist.is_initialized():
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise RuntimeError(f"WORLD_SIZE={world_size} but {var} is not set: launch with "
                                   "`torchrun --nproc_per_node N -m gcg.train ...`")
        backend = "nccl" if dev.type == "cuda" else "gloo"
        torch_dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistInfo(rank, world_size, local_rank, dev)


def get_world_size() -> int:
    """Number of processes in the group (1 without torchrun)."""
    return torch_dist.get_world_size() if torch_dist.is_initialized() else 1


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average ``tensor`` over ranks (in place); a no-op for a single process."""
    if torch_dist.is_initialized() and get_world_size() > 1:
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
        tensor /= get_world_size()
    return tensor


def cleanup() -> None:
    """Leave the process group (if one was joined)."""
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()
