"""Device, precision and (optional) DistributedDataParallel set-up.

Under ``torchrun`` (RANK / WORLD_SIZE set) every training command joins a
process group: gloo on CPU, nccl on CUDA. Rank 0 alone writes files.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from stpcli.errors import StpError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")


@dataclass
class Runtime:
    device: torch.device
    precision: str = "fp32"
    rank: int = 0
    world_size: int = 1
    compile: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def any_rank(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag, True on every rank if any rank raised it (stop requests, NaN); one all-reduce."""
        if not self.distributed:
            return flags
        value = torch.tensor([1.0 if f else 0.0 for f in flags], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return tuple(bool(v > 0) for v in value.tolist())


def setup_runtime(device: str = "auto", precision: str = "fp32", compile: bool = False) -> Runtime:
    if device not in DEVICES:
        raise StpError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    if precision not in PRECISIONS:
        raise StpError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise StpError("--device cuda was asked for, but no CUDA device is available")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        torch_device = torch.device("cuda", local)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        torch_device = torch.device("cpu")
    return Runtime(torch_device, precision, rank, world_size, compile)


def shutdown_runtime() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
