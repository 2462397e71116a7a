"""The GPU data-path switches (prefetch, channels_last, compile) keep CPU training unchanged."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from zhclip.training.config import train_config_from_dict
from zhclip.training.fixtures import (
    TINY_RN,
    tiny_train_section,
    write_shape_dataset,
    write_tiny_bert,
    write_tiny_image_tower,
)
from zhclip.training.runtime import setup_runtime
from zhclip.training.trainer import Trainer, train

torch.set_num_threads(1)
STEPS = {"stage1": {"steps": 2}, "stage2": {"steps": 2}}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    write_shape_dataset(root / "dataset", n_train=128, n_val=16, per_shard=32, size=40)
    return {"root": root, "vit": write_tiny_image_tower(root / "vit", name="Tiny-ViT-g"),
            "rn": write_tiny_image_tower(root / "rn", name="Tiny-RN-g", cfg=TINY_RN),
            "bert": write_tiny_bert(root / "bert", dropout=0.0)}


def _cfg(world, out: Path, kind: str = "vit", **over):
    return train_config_from_dict(tiny_train_section(world["root"], world[kind], world["bert"],
                                                     output=str(out), **over))


def _losses(out: Path) -> list[float]:
    with open(out / "metrics.csv", newline="", encoding="utf-8") as f:
        return [float(r["loss"]) for r in csv.DictReader(f) if r.get("loss")]


def test_channels_last_is_off_on_cpu_unless_asked(world, tmp_path):
    rt = setup_runtime("cpu", "fp32")
    for kind in ("vit", "rn"):
        assert Trainer(_cfg(world, tmp_path / kind, kind), rt).memory_format is torch.preserve_format
    forced = Trainer(_cfg(world, tmp_path / "forced", "rn", channels_last=True), rt)
    assert forced.memory_format is torch.channels_last
    conv = next(m for m in forced.model.image.modules() if isinstance(m, torch.nn.Conv2d)
                and m.kernel_size[0] > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_channels_last_resnet_trains_the_same_numbers(world, tmp_path):
    rt = setup_runtime("cpu", "fp32")
    train(_cfg(world, tmp_path / "nchw", "rn", **STEPS), rt)
    train(_cfg(world, tmp_path / "nhwc", "rn", channels_last=True, **STEPS), rt)
    plain, nhwc = _losses(tmp_path / "nchw"), _losses(tmp_path / "nhwc")
    assert len(plain) == 4 and nhwc == pytest.approx(plain, rel=1e-4)


def test_prefetch_depth_does_not_change_the_batches(world, tmp_path):
    rt = setup_runtime("cpu", "fp32")
    for depth in (1, 3):
        train(_cfg(world, tmp_path / f"p{depth}", data={"workers": 2, "prefetch": depth}, **STEPS), rt)
    assert _losses(tmp_path / "p1") == _losses(tmp_path / "p3")


def test_compile_flag_wraps_the_forward(world, tmp_path):
    trainer = Trainer(_cfg(world, tmp_path / "c", compile=True), setup_runtime("cpu", "fp32"))
    trainer._enter_stage(1)
    assert isinstance(trainer.ddp, torch._dynamo.eval_frame.OptimizedModule)
    assert trainer.ddp._orig_mod is trainer.model
    plain = Trainer(_cfg(world, tmp_path / "p"), setup_runtime("cpu", "fp32"))
    plain._enter_stage(1)
    assert plain.ddp is plain.model
