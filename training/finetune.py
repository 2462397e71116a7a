"""Fine-tuning a trained Chinese CLIP on a retrieval benchmark, the way Chinese-CLIP's
``run_scripts/*_finetune_*.sh`` do it.

Reading order: :class:`FineTuner` reads everything before the first step (the
model and tokenizer from ``--init``, the train pairs and the valid split, the
recipe), so bad input stops with one line; :meth:`FineTuner.run` walks the
epochs; each optimizer step is :class:`zhclip.training.step.StepRunner`'s, the
one pretraining takes; the valid split is evaluated at the recipe's interval
and the best mean recall's weights are kept in ``best.pt``; ``export.pt`` holds
those weights at the end (the last ones when there is no valid split).

The computation is cn_clip's (``cn_clip/training/main.py`` and ``train.py``): both
towers train; AdamW with cn_clip's weight-decay groups; lr linear warmup then
cosine to zero over ``epochs x ceil(pairs / batch)`` steps; the symmetric
contrastive loss with the temperature ``exp(logit_scale)``; the logit scale
clamped to [0, ln 100] after each step. Where zhclip differs on purpose:

- the clamp's upper bound is ``ln 100`` (4.60517...), cn_clip writes 4.6052;
- with ``accum_steps`` > 1 the temperature's gradient is taken once per step,
  where cn_clip's loop adds it once per micro-batch (``accum_steps`` times the
  full-batch gradient). The tower gradients are the same; AdamW's update of the
  logit scale differs only through ``eps`` (see tests/training/test_finetune_parity.py);
- without augmentation, train images are resized and center-cropped (zhclip's
  eval transform) where cn_clip squashes them to a square.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from zhclip.training import checkpoint as ckpt
from zhclip.training.benchmarks import BenchmarkError
from zhclip.training.config import StageConfig
from zhclip.training.data import eval_transform, train_transform
from zhclip.training.evaluate import evaluate_benchmark
from zhclip.training.export import export_model
from zhclip.training.finetune_data import (
    EpochBatches,
    detect_data_format,
    pair_loader,
    read_train_pairs,
    read_valid,
)
from zhclip.training.finetune_init import InitError, load_init_model
from zhclip.training.loss import ContrastiveLoss
from zhclip.training.metrics_log import MetricsLog
from zhclip.training.optim import make_optimizer, make_scheduler
from zhclip.training.recipes import Recipe, steps_per_epoch, total_steps
from zhclip.training.run_setup import memory_mb
from zhclip.training.runtime import Runtime, broadcast_from_main
from zhclip.training.step import StepPolicy, StepRunner, TrainingError
from zhclip.training.trainer import TrainState

log = logging.getLogger(__name__)
BEST = "best.pt"  # the weights with the best valid mean recall (a zhclip checkpoint)
EXPORT = "export.pt"


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


class FineTuner:
    """Reads the model, data and recipe, then fine-tunes on rank-split global batches."""

    def __init__(self, init: str, data: str, recipe: Recipe, output: str | Path, runtime: Runtime,
                 data_format: str = "auto", valid_split: str | None = None):
        self.recipe, self.rt, self.out = recipe, runtime, Path(output)
        world, accum = runtime.world_size, recipe.accum_steps
        if recipe.batch_size % (world * accum):
            raise TrainingError(f"train.finetune.batch_size {recipe.batch_size} must be divisible "
                                f"by ranks x accum_steps = {world} x {accum}")
        torch.manual_seed(recipe.seed + runtime.rank)
        try:
            folder = Path(data)
            fmt = detect_data_format(folder) if data_format == "auto" else data_format
            # the model first: a wrong --init fails before a large split is indexed
            self.model, self.tokenizer, self.init_format = load_init_model(init, recipe.context_length)
            self.train_pairs = read_train_pairs(folder, fmt)
            self.valid = read_valid(folder, fmt, valid_split)
        except (BenchmarkError, InitError, OSError) as err:
            raise TrainingError(str(err)) from None
        self.data_format = fmt
        if self.valid is None:
            log.warning("%s has no valid split: no evaluation, export.pt holds the last weights", data)
        n = len(self.train_pairs.pairs)
        self.steps_per_epoch = steps_per_epoch(n, recipe)
        self.total = total_steps(n, recipe)
        log.info("fine-tuning on %d pairs (%s): %d steps/epoch, %d steps, global batch %d",
                 n, fmt, self.steps_per_epoch, self.total, recipe.batch_size)

        spec = self.model.spec
        size, mean, std = spec["image_size"], spec["mean"], spec["std"]
        self.train_tf = (train_transform(size, mean, std, (0.9, 1.0), True) if recipe.augment
                         else eval_transform(size, mean, std))
        self.eval_tf = eval_transform(size, mean, std)
        self.model.unlock_image_tower()  # fine-tuning trains both towers, as cn_clip's does
        self.model.to(runtime.device)
        if recipe.grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        self.model.train()
        wrapped: torch.nn.Module = self.model
        if runtime.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [runtime.device.index] if runtime.device.type == "cuda" else None
            wrapped = DistributedDataParallel(self.model, device_ids=ids)
        stage = StageConfig(steps=self.total, batch_size=recipe.batch_size, lr=recipe.lr,
                            warmup=recipe.warmup, weight_decay=recipe.weight_decay,
                            beta1=recipe.beta1, beta2=recipe.beta2, eps=recipe.eps)
        self.optimizer = make_optimizer(self.model, stage, recipe.decay_rule)
        self.scheduler = make_scheduler(self.optimizer, stage)
        scaler = torch.amp.GradScaler("cuda", enabled=runtime.precision == "fp16")
        self.stepper = StepRunner(self.model, wrapped, self.optimizer, self.scheduler, scaler,
                                  ContrastiveLoss(), runtime, StepPolicy(accum_steps=accum))
        self.state = TrainState(stage=2, stage_started=True)
        self.metrics = MetricsLog(self.out, runtime.is_main, None, False)
        self.history: list[dict[str, Any]] = []
        if runtime.is_main:
            self.out.mkdir(parents=True, exist_ok=True)

    # ---- the loop ------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Fine-tune for the recipe's epochs (or max_steps); write best.pt and export.pt."""
        r, rt = self.recipe, self.rt
        bar = tqdm(total=self.total, disable=not rt.is_main, desc="finetune", dynamic_ncols=True)
        initial = self._validate(epoch=0)
        try:
            for epoch in range(r.epochs if not r.max_steps else 1 << 30):
                sampler = EpochBatches(len(self.train_pairs.pairs), r.batch_size, rt.rank,
                                       rt.world_size, r.seed, epoch)
                loader = pair_loader(self.train_pairs, self.train_tf, self.tokenizer, sampler,
                                     r.workers)
                for batch in loader:
                    if self.state.step >= self.total:
                        break
                    t0 = time.perf_counter()
                    loss = self.stepper.step(batch, self.state)
                    if loss is None:
                        continue
                    self.state.step += 1
                    bar.update(1)
                    self._log(epoch, loss, time.perf_counter() - t0, len(batch["input_ids"]))
                    if r.valid_every and self.state.step % r.valid_every == 0:
                        self._validate(epoch + 1)
                if r.valid_every_epoch and not self._validated_now():
                    self._validate(epoch + 1)
                if self.state.step >= self.total:
                    break
        finally:
            bar.close()
            self.metrics.close()
        if not self._validated_now():
            self._validate(epoch + 1)
        final = self._finish()
        return {"step": self.state.step, "init_format": self.init_format,
                "data_format": self.data_format, "pairs": len(self.train_pairs.pairs),
                "initial_eval": initial, "best_step": self.state.best_step,
                "eval": final, "history": self.history}

    def _validated_now(self) -> bool:
        return bool(self.history) and self.history[-1]["step"] == self.state.step

    def _log(self, epoch: int, loss: float, elapsed: float, rank_batch: int) -> None:
        if self.state.step % self.recipe.log_every and self.state.step != self.total:
            return
        self.metrics.log_train({
            "step": self.state.step, "epoch": epoch + 1, "loss": round(loss, 6),
            "lr": self.stepper.lr_used,
            "logit_scale": round(self.model.logit_scale.exp().item(), 4),
            "samples_per_s": round(rank_batch * self.rt.world_size / max(elapsed, 1e-9), 2),
            "memory_mb": round(memory_mb(self.rt.device), 1),
        })

    # ---- evaluation and the kept weights -----------------------------------------------

    def _evaluate(self) -> dict[str, float]:
        autocast = self.rt.autocast() if self.rt.precision != "fp32" else None
        return evaluate_benchmark(self.model, self.tokenizer, self.eval_tf, self.valid,
                                  self.rt.device, self.recipe.eval_batch_size, 4096, autocast)

    def _validate(self, epoch: int) -> dict[str, float] | None:
        """Rank 0 evaluates the valid split; a new best mean recall writes best.pt."""
        if self.valid is None:
            return None
        metrics = broadcast_from_main(self.rt, self._evaluate)
        st = self.state
        self.history.append({"step": st.step, "epoch": epoch, **metrics})
        self.metrics.log_eval(st.step, 2, metrics)
        log.info("step %d (epoch %d): mean recall %.2f", st.step, epoch, metrics["mean_recall"])
        if metrics["mean_recall"] > st.best_recall:
            st.best_recall, st.best_step = metrics["mean_recall"], st.step
            if self.rt.is_main:
                ckpt.atomic_save({
                    "format": ckpt.CHECKPOINT_FORMAT, "step": st.step, "epoch": epoch,
                    "mean_recall": st.best_recall, "model": _weights(self.model),
                    "spec": self.model.spec, "vocab": self.tokenizer.vocab(),
                    "context_length": self.tokenizer.context_length,
                    "recipe": self.recipe.model_dump(mode="json"),
                }, self.out / BEST)
        return metrics

    def _finish(self) -> dict[str, float] | None:
        """Load the best weights (if evaluation chose any) and export them."""
        final = None
        if self.state.best_step is not None:
            self.rt.barrier()
            best = torch.load(self.out / BEST, map_location="cpu", weights_only=True)
            self.model.load_state_dict(best["model"])
            final = next(h for h in self.history if h["step"] == self.state.best_step)
            log.info("export.pt holds step %d (mean recall %.2f)", self.state.best_step,
                     self.state.best_recall)
        if self.rt.is_main:
            export_model(self.model, self.tokenizer, self.out / EXPORT)
        return final


def finetune(init: str, data: str, recipe: Recipe, output: str | Path, runtime: Runtime,
             data_format: str = "auto", valid_split: str | None = None) -> dict[str, Any]:
    """Fine-tune ``init`` on ``data`` with ``recipe``; returns steps, evaluations, best step."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return FineTuner(init, data, recipe, output, runtime, data_format, valid_split).run()
