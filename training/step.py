"""One optimizer step of contrastive training, shared by pretraining and fine-tuning.

The step is where the numbers are made: forward under autocast, the
contrastive loss, backward (in micro-batches that keep the whole batch as
negatives when ``accum_steps`` > 1), optional clipping, the optimizer and
schedule step, and the logit-scale clamp. A non-finite loss is voted on by
every rank and then stops the run or skips the step, as the policy says.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.distributed as dist
from zhclip.training.loss import ContrastiveLoss
from zhclip.training.model import ChineseCLIP
from zhclip.training.runtime import Runtime

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, bad batch split); the message says why."""


class StepCounters(Protocol):
    """The run's counters the step reads (to say where it is) and updates (skips)."""

    step: int
    stage: int
    skipped_steps: int


@dataclass(frozen=True)
class StepPolicy:
    """How a step is taken: micro-batches, clipping, and what a non-finite loss does."""

    accum_steps: int = 1
    grad_clip: float | None = None
    nan_policy: str = "stop"  # "stop" | "skip"
    max_skipped_steps: int = 10


class StepRunner:
    """Takes optimizer steps on ``model`` (through ``wrapped``: DDP and/or compiled)."""

    def __init__(self, model: ChineseCLIP, wrapped: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: Any, scaler: torch.amp.GradScaler, loss_fn: ContrastiveLoss,
                 runtime: Runtime, policy: StepPolicy,
                 memory_format: torch.memory_format = torch.preserve_format):
        self.model, self.wrapped = model, wrapped
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler
        self.loss_fn, self.rt, self.policy = loss_fn, runtime, policy
        self.memory_format = memory_format
        self.lr_used = optimizer.param_groups[0]["lr"]  # the lr of the last step taken

    def step(self, batch: dict[str, Any], counters: StepCounters) -> float | None:
        """One optimizer step; returns the loss, or None when a non-finite loss was skipped."""
        dev = self.rt.device
        images = batch["images"].to(dev, non_blocking=True, memory_format=self.memory_format)
        ids = batch["input_ids"].to(dev, non_blocking=True)
        mask = batch["attention_mask"].to(dev, non_blocking=True)
        accum = self.policy.accum_steps
        self.optimizer.zero_grad(set_to_none=True)
        if accum == 1:
            with self.rt.autocast():
                img, txt, scale = self.wrapped(images, ids, mask)
                loss = self.loss_fn(img, txt, scale)
            if not self._finite(loss):
                return self._skip(loss, counters)
            self.scaler.scale(loss).backward()
        else:
            loss = self.accumulated_backward(images, ids, mask, accum)
            if loss is None:
                return self._skip(torch.tensor(float("nan")), counters)
        self.lr_used = self.optimizer.param_groups[0]["lr"]
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        if self.policy.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(trainable, self.policy.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.model.clamp_logit_scale()
        return float(loss.detach())

    def accumulated_backward(self, images, ids, mask, accum: int) -> torch.Tensor | None:
        """Gradient accumulation that keeps the whole batch as negatives.

        A no-grad pass embeds every micro-batch; then each micro-batch is
        re-embedded with grad and contrasted against the cached rest, so the
        summed gradients equal those of one pass over the full batch (up to
        dropout noise). The temperature gets its gradient once, on the last pass.
        """
        chunks = list(zip(images.chunk(accum), ids.chunk(accum), mask.chunk(accum), strict=True))
        with torch.no_grad(), self.rt.autocast():
            cached = [self.model(*c) for c in chunks]
        cached_img = [c[0] for c in cached]
        cached_txt = [c[1] for c in cached]
        first_loss = None
        for j, chunk in enumerate(chunks):
            last = j == accum - 1
            sync = contextlib.nullcontext() if last or not self.rt.distributed else self.wrapped.no_sync()
            with sync:
                with self.rt.autocast():
                    img, txt, scale = self.wrapped(*chunk)
                    if not last:
                        scale = scale.detach()
                    all_img = torch.cat(cached_img[:j] + [img] + cached_img[j + 1:])
                    all_txt = torch.cat(cached_txt[:j] + [txt] + cached_txt[j + 1:])
                    loss = self.loss_fn(all_img, all_txt, scale)
                if first_loss is None:
                    if not self._finite(loss):
                        return None
                    first_loss = loss.detach()
                self.scaler.scale(loss).backward()
        return first_loss

    def _finite(self, loss: torch.Tensor) -> bool:
        ok = torch.tensor(1.0 if torch.isfinite(loss).item() else 0.0, device=self.rt.device)
        if self.rt.distributed:
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)  # every rank takes the same decision
        return bool(ok.item())

    def _skip(self, loss: torch.Tensor, counters: StepCounters) -> None:
        where = (f"step {counters.step + 1} (stage {counters.stage}, lr "
                 f"{self.scheduler.get_last_lr()[0]:.3g}, logit scale "
                 f"{self.model.logit_scale.exp().item():.3g}): loss is {loss.item()}")
        if self.policy.nan_policy == "stop":
            raise TrainingError(
                f"non-finite loss at {where}. Lower the stage's lr, use precision bf16/fp32 "
                "instead of fp16, set train.grad_clip, or set train.nan_policy: skip"
            )
        counters.skipped_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        log.warning("skipping %s (%d skipped)", where, counters.skipped_steps)
        if counters.skipped_steps > self.policy.max_skipped_steps:
            raise TrainingError(
                f"more than {self.policy.max_skipped_steps} non-finite losses; last at {where}")
        return None
