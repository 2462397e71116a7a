"""Set-up decisions a training run makes before its first step, shared with fine-tuning.

How a global batch splits over ranks and micro-batches, which memory format the
image tower runs in, which retrieval benchmark evaluation watches (read now, so a
wrong path fails before step 1), and how much memory the run has used.
"""

from __future__ import annotations

import logging

import torch
from zhclip.pipeline.core.memory import peak_rss_mb
from zhclip.training.benchmarks import BenchmarkError, RetrievalSet, read_retrieval
from zhclip.training.config import StageConfig, TrainConfig
from zhclip.training.step import TrainingError

log = logging.getLogger(__name__)


def per_rank_batch(stage: StageConfig, world: int, accum: int, index: int) -> int:
    """The batch one rank draws per step: the global batch over the ranks (checked to split
    evenly over ranks x micro-batches, so every micro-batch has the same size)."""
    batch = int(stage.batch_size or 0)
    if batch % (world * accum):
        raise TrainingError(
            f"train.stage{index}.batch_size {batch} must be divisible by ranks x accum_steps "
            f"= {world} x {accum}"
        )
    return batch // world


def memory_mb(device: torch.device) -> float:
    """Peak memory so far: the CUDA allocator's on a GPU, the process's resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()


def pick_memory_format(model: torch.nn.Module, device: torch.device,
                       wanted: bool | None) -> torch.memory_format:
    """channels_last for conv towers on CUDA (cuDNN's fast NHWC kernels); a ViT has one
    conv, its patch embedding, and gains nothing, so ``None`` leaves ViTs as they are."""
    if wanted is None:
        convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.image.modules())
        wanted = device.type == "cuda" and convs > 1
    return torch.channels_last if wanted else torch.preserve_format


def open_eval_benchmark(cfg: TrainConfig) -> RetrievalSet | None:
    """The configured retrieval benchmark, read now: a wrong path fails before step 1."""
    if cfg.eval_data is None:
        return None
    try:
        bench = read_retrieval(cfg.eval_data, cfg.eval_format, cfg.eval_split)
    except (BenchmarkError, OSError) as err:
        raise TrainingError(f"train.eval_data: {err}") from None
    log.info("evaluation watches %s (%s, %d images, %d captions), not the val shards",
             cfg.eval_data, bench.format, len(bench.image_ids), len(bench.texts))
    return bench
