"""`zhclip train` killed with SIGKILL mid-run, then `--resume latest`: the loss of every step
equals the uninterrupted run's (the checkpoint holds model, optimizer, RNG and data position)."""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import pytest
import yaml
from zhclip.pipeline.cli import main as zhclip
from zhclip.training.checkpoint import list_checkpoints
from zhclip.training.fixtures import (
    tiny_train_section,
    write_shape_dataset,
    write_tiny_bert,
    write_tiny_image_tower,
)

ZHCLIP = str(Path(sys.executable).parent / "zhclip")
STEPS = 6  # per stage


def _config(root: Path, path: Path, out: Path) -> Path:
    section = tiny_train_section(
        root,
        write_tiny_image_tower(root / "vit", name="Tiny-ViT-k"),
        root / "bert",
        save_every=1,
        keep_checkpoints=50,
        data={"auto_augment": True},
        stage1={"steps": STEPS},
        stage2={"steps": STEPS},
    )
    del section["output"]  # OUT/train
    path.write_text(
        yaml.safe_dump({"output": str(out), "train": section}, allow_unicode=True), encoding="utf-8"
    )
    return path


def _losses(train_dir: Path) -> dict[int, float]:
    """Loss per step; a step logged again after the resume counts with its last value."""
    with (train_dir / "metrics.csv").open(encoding="utf-8") as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f)}


@pytest.mark.slow
def test_sigkill_mid_training_then_resume_latest_gives_the_same_losses(tmp_path, kill_when_ready):
    root = tmp_path / "world"
    write_shape_dataset(root / "dataset", n_train=256, n_val=16, per_shard=64, size=32)
    write_tiny_bert(root / "bert")
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert zhclip(["train", "--config", str(_config(root, tmp_path / "f.yaml", full))]) == 0

    cfg = _config(root, tmp_path / "k.yaml", killed)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    checkpoints = killed / "train" / "checkpoints"
    kill_when_ready(
        [ZHCLIP, "train", "--config", str(cfg)],
        lambda: checkpoints.exists() and len(list_checkpoints(checkpoints)) >= STEPS - 1,
        240, env=env, what="training")
    saved = [s for s, _ in list_checkpoints(checkpoints)]
    assert STEPS - 1 <= max(saved) < 2 * STEPS

    assert zhclip(["train", "--config", str(cfg), "--resume", "latest"]) == 0
    a, b = _losses(full / "train"), _losses(killed / "train")
    assert sorted(a) == sorted(b) == list(range(1, 2 * STEPS + 1))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-6, abs=1e-7), step
