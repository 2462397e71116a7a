"""Process-level set-up: device, precision, and torch.distributed under torchrun.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; a plain ``python`` or ``zhclip
train`` run is one process. GPUs talk over nccl, CPUs over gloo.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from zhclip.pipeline.core.config import ConfigError
from zhclip.pipeline.core.devices import resolve_device

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    precision: str = "fp32"

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[self.precision])

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def _pick_device(requested: str, local_rank: int) -> torch.device:
    return torch.device(resolve_device(requested, key="train.device", local_rank=local_rank))


def _pick_precision(requested: str, device: torch.device) -> str:
    if requested == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if requested == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    return requested


def setup_runtime(device: str = "auto", precision: str = "auto") -> Runtime:
    """Join the torchrun process group if there is one, and pick device and precision."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return Runtime(dev, rank, local_rank, world, _pick_precision(precision, dev))


def teardown_runtime(runtime: Runtime) -> None:
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()
