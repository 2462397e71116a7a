"""The two-stage trainer: stage 1 locks the image tower (LiT), stage 2 trains all.

Reading order: :class:`Trainer.run` walks the stages; :meth:`_enter_stage`
sets one up (lock or unlock, DDP wrap, fresh optimizer and schedule, data
stream at the stage's batch size); :meth:`_step` is one optimizer step
(:class:`zhclip.training.step.StepRunner`, shared with fine-tuning);
:meth:`_after_step` logs, evaluates (and decides a plateau switch) and saves.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm
from zhclip.training import checkpoint as ckpt
from zhclip.training.config import TrainConfig, fill_stage_defaults
from zhclip.training.convert import read_init_weights
from zhclip.training.data import (
    DataPosition,
    StreamSpec,
    check_resolution,
    corpus_resolution,
    eval_loader,
    eval_transform,
    list_shards,
    train_loader,
    train_transform,
)
from zhclip.training.evaluate import evaluate, evaluate_benchmark
from zhclip.training.export import export_model
from zhclip.training.loss import ContrastiveLoss
from zhclip.training.metrics_log import MetricsLog
from zhclip.training.model import ChineseCLIP, build_model, load_weights, resolve_towers
from zhclip.training.optim import make_optimizer, make_scheduler
from zhclip.training.run_setup import (
    memory_mb,
    open_eval_benchmark,
    per_rank_batch,
    pick_memory_format,
)
from zhclip.training.runtime import Runtime, broadcast_from_main
from zhclip.training.step import StepPolicy, StepRunner, TrainingError
from zhclip.training.tokenizer import load_tokenizer

log = logging.getLogger(__name__)


BEST_STAGE1 = "best_stage1.pt"  # the stage-1 weights with the best evaluation, under output


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done, both stages
    stage: int = 1
    stage_step: int = 0
    stage_started: bool = False  # whether the checkpoint was taken inside the stage
    best_recall: float = -1.0
    best_step: int | None = None  # stage-1 step of best_recall, whose weights are BEST_STAGE1
    evals_without_gain: int = 0
    skipped_steps: int = 0
    switched_at: int | None = None  # global step at which stage 2 began


class Trainer:
    """Builds everything from a TrainConfig and runs (or resumes) both stages."""

    def __init__(self, cfg: TrainConfig, runtime: Runtime, resume: Path | None = None):
        self.cfg = cfg
        self.rt = runtime
        self.out = Path(cfg.output or "train")
        self.ckpt_dir = self.out / "checkpoints"
        torch.manual_seed(cfg.seed + runtime.rank)
        image_cfg, _ = resolve_towers(cfg)
        self.stages = {1: fill_stage_defaults(cfg.stage1, 1, image_cfg.model),
                       2: fill_stage_defaults(cfg.stage2, 2, image_cfg.model)}
        for i, st in self.stages.items():
            if st.steps:
                per_rank_batch(st, runtime.world_size, cfg.accum_steps, i)

        self.model: ChineseCLIP = build_model(cfg)
        self.tokenizer = load_tokenizer(cfg.tokenizer or resolve_towers(cfg)[1].model,
                                        cfg.context_length)
        if self.tokenizer.vocab_size > self.model.text.bert.config.vocab_size:
            raise TrainingError(
                f"tokenizer has {self.tokenizer.vocab_size} tokens but the text tower only "
                f"{self.model.text.bert.config.vocab_size}; train.tokenizer and train.text disagree"
            )
        self.state = TrainState()
        self.resume_state: dict[str, Any] | None = None
        if resume is not None:
            self.resume_state = ckpt.load_checkpoint(resume)
            load_weights(self.model, self.resume_state["model"])
            self.state = TrainState(**self.resume_state["train_state"])
            log.info("resuming from %s (step %d, stage %d)", resume, self.state.step, self.state.stage)
        elif cfg.init_from:
            load_weights(self.model, read_init_weights(cfg.init_from))
        self.model.to(runtime.device)
        if cfg.grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        self.memory_format = pick_memory_format(self.model, self.rt.device, cfg.channels_last)
        if self.memory_format is torch.channels_last:
            self.model.image.to(memory_format=torch.channels_last)

        spec = self.model.spec
        size = cfg.data.image_size or spec["image_size"]
        data_size = cfg.data.resolution or corpus_resolution(cfg.data.path)
        try:
            check_resolution(size, data_size, cfg.allow_upscale)
        except ValueError as err:
            raise TrainingError(str(err)) from None
        self.train_tf = train_transform(size, spec["mean"], spec["std"], cfg.data.crop_scale,
                                        cfg.data.auto_augment)
        self.eval_tf = eval_transform(size, spec["mean"], spec["std"])
        self.train_shards = list_shards(cfg.data.path, "train", cfg.data.train, cfg.data.glob)
        try:
            self.val_shards = list_shards(cfg.data.path, "val", cfg.data.val, cfg.data.glob)
        except FileNotFoundError as err:
            if cfg.eval_data is None:
                log.warning("no validation split (%s): evaluation and plateau switching are off", err)
            self.val_shards = []
        self.benchmark = open_eval_benchmark(cfg)
        saved_pos = None
        if self.resume_state is not None:
            ranks = self.resume_state.get("data_position", [])
            if len(ranks) == runtime.world_size:
                saved_pos = ranks[runtime.rank]
            else:
                log.warning("checkpoint has %d ranks' data positions, run has %d: the data "
                            "stream restarts", len(ranks), runtime.world_size)
        self.position = DataPosition(cfg.data.workers, saved_pos)
        self.loss_fn = ContrastiveLoss(local_loss=cfg.local_loss)
        self.scaler = torch.amp.GradScaler("cuda", enabled=runtime.precision == "fp16")
        self.metrics = MetricsLog(self.out, runtime.is_main,
                                  self.state.step if resume is not None else None,
                                  cfg.tensorboard)
        self.last_eval: dict[str, float] | None = None
        if runtime.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "train_config.json").write_text(
                json.dumps(cfg.model_dump(mode="json"), indent=2, ensure_ascii=False), encoding="utf-8")

    # ---- stages -----------------------------------------------------------------

    def _enter_stage(self, index: int) -> None:
        stage = self.stages[index]
        if index == 1:
            self.model.lock_image_tower()
        else:
            self.model.unlock_image_tower()
        self.model.train()
        if self.rt.distributed:
            ids = [self.rt.device.index] if self.rt.device.type == "cuda" else None
            self.ddp: torch.nn.Module = DistributedDataParallel(self.model, device_ids=ids)
        else:
            self.ddp = self.model
        if self.cfg.compile:
            # Compiles on the first step of each stage (stage 2 unlocks weights: new graph).
            self.ddp = torch.compile(self.ddp)
        self.optimizer = make_optimizer(self.model, stage)
        self.scheduler = make_scheduler(self.optimizer, stage)
        cfg = self.cfg
        self.stepper = StepRunner(
            self.model, self.ddp, self.optimizer, self.scheduler, self.scaler, self.loss_fn, self.rt,
            StepPolicy(cfg.accum_steps, cfg.grad_clip, cfg.nan_policy, cfg.max_skipped_steps),
            self.memory_format)
        self.batch_size = per_rank_batch(stage, self.rt.world_size, self.cfg.accum_steps, index)
        spec = StreamSpec(
            shards=self.train_shards, batch_size=self.batch_size, seed=self.cfg.seed,
            rank=self.rt.rank, world_size=self.rt.world_size, workers=self.cfg.data.workers,
            resampled=self.cfg.data.resampled, shuffle_buffer=self.cfg.data.shuffle_buffer,
        )
        loader = train_loader(spec, self.train_tf, self.tokenizer, self.position,
                              pin_memory=self.rt.device.type == "cuda",
                              prefetch=self.cfg.data.prefetch)
        self.batches = iter(loader)
        self.state.stage = index
        self.state.stage_started = True

    def run(self) -> dict[str, Any]:
        """Train both stages (or what is left of them) and write the export."""
        total = sum(st.steps for st in self.stages.values())
        bar = tqdm(total=total, initial=min(self.state.step, total), disable=not self.rt.is_main,
                   desc="train", dynamic_ncols=True)
        resume = self.resume_state
        initial_eval = None
        if self.cfg.eval_at_start and resume is None and self.state.step == 0:
            initial_eval = self._evaluate(1)
        try:
            for index in (1, 2):
                if index < self.state.stage or not self.stages[index].steps:
                    continue
                if resume is not None and resume["train_state"]["stage_started"]:
                    self._enter_stage(index)
                    self._load_stage_state(resume)
                else:
                    if resume is not None:
                        ckpt.set_rng_state(resume["rng"][self.rt.rank])
                    self._enter_stage(index)
                resume = None
                self._run_stage(index, bar)
        finally:
            bar.close()
            self.metrics.close()
        if self.rt.is_main:
            export_model(self.model, self.tokenizer, self.out / "export.pt")
        return {"step": self.state.step, "switched_at": self.state.switched_at,
                "initial_eval": initial_eval, "eval": self.last_eval}

    def _load_stage_state(self, resume: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(resume["optimizer"])
        self.scheduler.load_state_dict(resume["scheduler"])
        if resume.get("scaler"):
            self.scaler.load_state_dict(resume["scaler"])
        # after the loader was built: building it draws from the RNG, as it did
        # when the uninterrupted run entered this stage
        ckpt.set_rng_state(resume["rng"][self.rt.rank])

    def _run_stage(self, index: int, bar: tqdm) -> None:
        stage = self.stages[index]
        while self.state.stage_step < stage.steps:
            t0 = time.perf_counter()
            batch = next(self.batches)
            self.position.update(batch["position"])
            loss = self._step(batch)
            if loss is None:
                continue
            self.state.step += 1
            self.state.stage_step += 1
            bar.update(1)
            elapsed = time.perf_counter() - t0
            switch = self._after_step(index, loss, elapsed, bar)
            if switch:
                break
        self._finish_stage(index)

    def _finish_stage(self, index: int) -> None:
        if index == 1:
            self.state.switched_at = self.state.step
            log.info("stage 1 done at step %d; stage 2 trains every weight", self.state.step)
        if self.last_eval is None or self.last_eval.get("step") != self.state.step:
            metrics = self._evaluate(index)
            if index == 1 and metrics is not None:
                self._track_best(metrics)
        if index == 1:
            self._restore_best_stage1()
        self.state.stage = index + 1
        self.state.stage_step = 0
        self.state.stage_started = False
        self._save()

    def _track_best(self, metrics: dict[str, float]) -> bool:
        """Record a stage-1 evaluation; on a gain of more than plateau_delta, keep its
        weights (rank 0 writes BEST_STAGE1). Returns whether it was such a gain."""
        st = self.state
        if metrics["mean_recall"] <= st.best_recall + self.stages[1].plateau_delta:
            return False
        st.best_recall, st.best_step = metrics["mean_recall"], st.step
        if self.rt.is_main:
            ckpt.atomic_save({"step": st.step, "mean_recall": st.best_recall,
                              "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()}},
                             self.out / BEST_STAGE1)
        return True

    def _restore_best_stage1(self) -> None:
        """Stage 2 starts from the best stage-1 weights, not the last ones, and says which."""
        st = self.state
        if st.best_step is None:
            log.info("stage 2 starts from the stage-1 weights of step %d (no evaluation to "
                     "choose a better one)", st.step)
            return
        if st.best_step == st.step:
            log.info("stage 2 starts from step %d, the best stage-1 checkpoint (mean recall "
                     "%.2f)", st.step, st.best_recall)
            return
        self.rt.barrier()  # rank 0 has written the file
        best = torch.load(self.out / BEST_STAGE1, map_location="cpu", weights_only=True)
        load_weights(self.model, best["model"])
        log.info("stage 2 resumes from the best stage-1 checkpoint: step %d (mean recall %.2f), "
                 "not the last stage-1 step %d", st.best_step, st.best_recall, st.step)

    # ---- one step ---------------------------------------------------------------

    def _step(self, batch: dict[str, Any]) -> float | None:
        """One optimizer step (see :mod:`zhclip.training.step`); None when it was skipped."""
        return self.stepper.step(batch, self.state)

    # ---- bookkeeping --------------------------------------------------------------

    def _after_step(self, index: int, loss: float, elapsed: float, bar: tqdm) -> bool:
        """Log, evaluate, save. Returns True when stage 1 has plateaued."""
        st, cfg = self.state, self.cfg
        if st.step % cfg.log_every == 0 or st.stage_step == self.stages[index].steps:
            row = {
                "step": st.step, "stage": index, "loss": round(loss, 6),
                "lr": self.stepper.lr_used,
                "logit_scale": round(self.model.logit_scale.exp().item(), 4),
                "samples_per_s": round(self.batch_size * self.rt.world_size / max(elapsed, 1e-9), 2),
                "memory_mb": round(memory_mb(self.rt.device), 1),
                "skipped_steps": st.skipped_steps,
            }
            self.metrics.log_train(row)
            bar.set_postfix(stage=index, loss=f"{loss:.4f}", refresh=False)
        switch = False
        if st.step % cfg.eval_every == 0:
            metrics = self._evaluate(index)
            switch = index == 1 and metrics is not None and self._plateaued(metrics)
        if st.step % cfg.save_every == 0 and not switch:
            self._save()
        return switch

    def _plateaued(self, metrics: dict[str, float]) -> bool:
        stage, st = self.stages[1], self.state
        if self._track_best(metrics):
            st.evals_without_gain = 0
        else:
            st.evals_without_gain += 1
        if stage.plateau_patience is None:
            return False
        if st.evals_without_gain >= stage.plateau_patience:
            log.info("stage 1 plateaued at step %d (best mean recall %.2f)", st.step, st.best_recall)
            return True
        return False

    def _evaluate(self, index: int) -> dict[str, float] | None:
        """Rank 0 evaluates (on train.eval_data, else the val split); every rank receives the numbers.

        The others wait under the runtime's evaluation timeout (train.eval_timeout_s),
        not the process group's, so a long evaluation does not stall them into an error.
        """
        if self.benchmark is None and not self.val_shards:
            return None

        def run_eval() -> dict[str, float]:
            autocast = self.rt.autocast() if self.rt.precision != "fp32" else None
            if self.benchmark is not None:
                metrics = evaluate_benchmark(self.model, self.tokenizer, self.eval_tf, self.benchmark,
                                             self.rt.device, self.cfg.eval_batch_size,
                                             self.cfg.eval_chunk, autocast)
            else:
                loader = eval_loader(self.val_shards, self.eval_tf, self.tokenizer,
                                     self.cfg.eval_batch_size, self.cfg.data.workers,
                                     self.cfg.data.val_max_samples)
                metrics = evaluate(self.model, loader, self.rt.device, self.cfg.eval_chunk, autocast)
            self.metrics.log_eval(self.state.step, index, metrics)
            log.info("step %d stage %d: %s", self.state.step, index,
                     {k: round(v, 2) for k, v in metrics.items()})
            return metrics

        metrics = broadcast_from_main(self.rt, run_eval)
        self.last_eval = {**metrics, "step": self.state.step}
        return metrics

    def _gather(self, obj: Any) -> list[Any]:
        if not self.rt.distributed:
            return [obj]
        out: list[Any] = [None] * self.rt.world_size
        dist.all_gather_object(out, obj)
        return out

    def _save(self) -> None:
        positions = self._gather(self.position.state())
        rngs = self._gather(ckpt.rng_state())
        if self.rt.is_main:
            ckpt.save_checkpoint(self.ckpt_dir, self.state.step, {
                "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                "train_state": asdict(self.state),
                "data_position": positions,
                "rng": rngs,
                "spec": self.model.spec,
                "vocab": self.tokenizer.vocab(),
                "context_length": self.tokenizer.context_length,
                "config": self.cfg.model_dump(mode="json"),
            }, keep=self.cfg.keep_checkpoints)
        self.rt.barrier()


def check_config(cfg: TrainConfig) -> None:
    """Catch settings that would only fail deep inside the loop."""
    for i, st in ((1, cfg.stage1), (2, cfg.stage2)):
        if st.lr is not None and not math.isfinite(st.lr):
            raise TrainingError(f"train.stage{i}.lr must be finite")
    if not cfg.stage1.steps and not cfg.stage2.steps:
        raise TrainingError("train.stage1.steps and train.stage2.steps are both 0: nothing to train")


def train(cfg: TrainConfig, runtime: Runtime, resume: str | None = None) -> dict[str, Any]:
    """Run (or resume) two-stage training; returns the final step and evaluation."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    check_config(cfg)
    try:
        resume_path = ckpt.resolve_resume(resume, Path(cfg.output or "train") / "checkpoints")
        if resume == "latest" and resume_path is None:
            log.info("--resume latest: no checkpoint yet, starting fresh")
        trainer = Trainer(cfg, runtime, resume_path)
    except (ckpt.UnsafeCheckpoint, ckpt.DamagedCheckpoint) as err:
        raise TrainingError(str(err)) from None
    return trainer.run()
