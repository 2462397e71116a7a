"""`zhclip train`: two-stage pretraining on OUT/dataset from the main YAML config.

One process: ``zhclip train --config c.yaml``. Several: ``torchrun
--nproc_per_node 8 -m zhclip.training.cli --config c.yaml`` (same flags).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from zhclip.pipeline.core.config import load_config
from zhclip.pipeline.core.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resume", metavar="latest|PATH",
                        help="continue from the newest checkpoint (latest) or a checkpoint file")
    parser.add_argument("--output", help="training folder (default: train.output, else OUT/train)")
    parser.add_argument("--stage1-steps", type=int, help="override train.stage1.steps")
    parser.add_argument("--stage2-steps", type=int, help="override train.stage2.steps")
    parser.add_argument("--device", help="override train.device (auto, cpu, cuda)")


def _overrides(args: argparse.Namespace) -> list[str]:
    extra = list(getattr(args, "overrides", []) or [])
    if args.output:
        extra.append(f"train.output={args.output}")
    if args.stage1_steps is not None:
        extra.append(f"train.stage1.steps={args.stage1_steps}")
    if args.stage2_steps is not None:
        extra.append(f"train.stage2.steps={args.stage2_steps}")
    if args.device:
        extra.append(f"train.device={args.device}")
    return extra


def main(args: argparse.Namespace, beam_args: list[str]) -> int:
    if beam_args:
        raise UsageError(f"zhclip train does not take {' '.join(beam_args)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # torch and the towers are imported only when training actually runs
    from zhclip.training.config import train_config
    from zhclip.training.runtime import setup_runtime, teardown_runtime
    from zhclip.training.trainer import TrainingError, train

    config = load_config(getattr(args, "config", None), _overrides(args))
    if not config.train:
        raise UsageError("the config has no train: section (see configs/chinese_clip.yaml)")
    cfg = train_config(config)
    runtime = setup_runtime(cfg.device, cfg.precision, cfg.eval_timeout_s)
    try:
        result = train(cfg, runtime, args.resume)
    except TrainingError as err:
        print(f"zhclip train: error: {err}", file=sys.stderr)
        return 1
    finally:
        teardown_runtime(runtime)
    if runtime.is_main:
        print(json.dumps({"output": cfg.output, **result}, ensure_ascii=False, default=str))
    return 0


# --- the demo's tiny two-stage run ------------------------------------------------


def demo_train_section(out: Path, captions: list[str], steps: int) -> dict:
    """Tiny towers written to OUT/models and a two-stage schedule for the demo shards."""
    from zhclip.training.tiny import write_tiny_bert, write_tiny_image_tower

    models = out / "models"
    image = write_tiny_image_tower(models / "image", name="zhclip-demo-vit", image_size=32)
    text = write_tiny_bert(models / "text", captions, hidden=64, layers=2)
    stage1 = max(1, steps // 3)
    return {
        "image": image,
        "text": {"model": str(text)},
        "context_length": 32,
        "data": {"path": str(out / "dataset"), "workers": 0, "shuffle_buffer": 256,
                 "auto_augment": False, "crop_scale": [0.8, 1.0]},
        "stage1": {"steps": stage1, "batch_size": 32, "lr": 2e-3, "warmup": 10},
        "stage2": {"steps": steps - stage1, "batch_size": 32, "lr": 1e-3, "warmup": 10},
        "output": str(out / "train"),
        "eval_at_start": True,
        "eval_every": 100,
        "save_every": 1000,
        "log_every": 50,
        "eval_batch_size": 64,
        "precision": "fp32",
        "device": "cpu",
    }


def _mean_recall(ev: dict | None) -> float:
    return float(ev["mean_recall"]) if ev else float("nan")


def train_demo(out: Path, data: dict, steps: int) -> dict:
    """Train the tiny model through both stages on OUT/dataset; return recalls.

    ``zhclip demo`` calls this (the one way into training from the pipeline);
    ``data`` is the demo's config dict, which gets a tiny-model train: section.
    """
    import pyarrow.compute as pc
    from zhclip.pipeline.core import schema as S
    from zhclip.pipeline.core.config import config_from_dict
    from zhclip.pipeline.shards import format as SH
    from zhclip.training.config import train_config
    from zhclip.training.runtime import setup_runtime, teardown_runtime
    from zhclip.training.trainer import train

    table = SH.read_dataset_table(str(out / "dataset"))
    captions = pc.unique(table.column(S.CAPTION)).to_pylist()
    data = dict(data, train=demo_train_section(out, captions, steps))
    cfg = train_config(config_from_dict(data))
    runtime = setup_runtime(cfg.device, cfg.precision)
    try:
        result = train(cfg, runtime)
    finally:
        teardown_runtime(runtime)
    return {"before": _mean_recall(result.get("initial_eval")), "after": _mean_recall(result["eval"]),
            "initial_eval": result.get("initial_eval"), "eval": result["eval"],
            "switched_at": result.get("switched_at"), "output": cfg.output}


if __name__ == "__main__":
    from zhclip.training.torchrun_entry import torchrun_entry

    sys.exit(torchrun_entry("train", add_arguments, main))
