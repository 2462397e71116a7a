"""`zhclip train`: two-stage pretraining on OUT/dataset from the main YAML config.

One process: ``zhclip train --config c.yaml``. Several: ``torchrun
--nproc_per_node 8 -m zhclip.training.cli --config c.yaml`` (same flags).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

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


if __name__ == "__main__":
    from zhclip.training.torchrun_entry import torchrun_entry

    sys.exit(torchrun_entry("train", add_arguments, main))
