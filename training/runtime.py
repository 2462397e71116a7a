"""Process-level set-up: device, precision, and torch.distributed under torchrun.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; a plain ``python`` or ``zhclip
train`` run is one process. GPUs talk over nccl, CPUs over gloo.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from zhclip.pipeline.core.config import ConfigError
from zhclip.pipeline.core.devices import resolve_device

# How long the other ranks may wait while rank 0 evaluates (a benchmark at
# ViT-H scale takes longer than the process group's default 10-30 minutes).
EVAL_TIMEOUT_S = 4 * 3600

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    precision: str = "fp32"
    # a gloo group with a long timeout, for waiting on rank 0's evaluation
    wait_group: Any = None

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


def setup_runtime(device: str = "auto", precision: str = "auto",
                  eval_timeout_s: float = EVAL_TIMEOUT_S,
                  timeout_s: float | None = None) -> Runtime:
    """Join the torchrun process group if there is one, and pick device and precision.

    ``timeout_s`` is the process group's own timeout (None: torch's default);
    ``eval_timeout_s`` the wait group's, which only carries rank 0's evaluation
    result, so the other ranks can wait for it without tripping the first.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        kw = {"timeout": timedelta(seconds=timeout_s)} if timeout_s else {}
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", **kw)
    wait_group = None
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        wait_group = dist.new_group(backend="gloo", timeout=timedelta(seconds=eval_timeout_s))
    return Runtime(dev, rank, local_rank, world, _pick_precision(precision, dev), wait_group)


def broadcast_from_main(runtime: Runtime, fn: Any) -> Any:
    """``fn()`` on rank 0, its (picklable) result on every rank.

    The others wait on the wait group, whose timeout is the evaluation's, not
    the process group's: a long evaluation does not kill the job.
    """
    result = [fn() if runtime.is_main else None]
    if runtime.distributed:
        dist.broadcast_object_list(result, src=0, group=runtime.wait_group)
    return result[0]


def teardown_runtime(runtime: Runtime) -> None:
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()
