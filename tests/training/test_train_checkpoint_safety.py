"""Checkpoints are loaded as data, never as code, and a damaged newest one is skipped."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch
from zhclip.training.checkpoint import (
    CHECKPOINT_FORMAT,
    UnsafeCheckpoint,
    list_checkpoints,
    load_checkpoint,
    resolve_resume,
)
from zhclip.training.config import train_config_from_dict
from zhclip.training.export import read_weights_file
from zhclip.training.fixtures import (
    tiny_train_section,
    write_shape_dataset,
    write_tiny_bert,
    write_tiny_image_tower,
)
from zhclip.training.runtime import setup_runtime
from zhclip.training.trainer import TrainingError, train

torch.set_num_threads(1)


class _TouchOnLoad:
    """Unpickling this object calls Path.touch(marker): proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    write_shape_dataset(root / "dataset", n_train=64, n_val=16, per_shard=32, size=32)
    image = write_tiny_image_tower(root / "vit", name="Tiny-ViT-c")
    bert = write_tiny_bert(root / "bert")
    section = tiny_train_section(root, image, bert, output=str(root / "full"), save_every=1,
                                 keep_checkpoints=10, stage1={"steps": 2, "batch_size": 8},
                                 stage2={"steps": 2, "batch_size": 8})
    train(train_config_from_dict(section), setup_runtime("cpu", "fp32"))
    return root, section


def _cfg(section, out: Path):
    return train_config_from_dict({**section, "output": str(out)})


def test_every_checkpoint_loads_with_weights_only(run):
    root, _ = run
    found = list_checkpoints(root / "full" / "checkpoints")
    assert [s for s, _ in found] == [1, 2, 3, 4]
    for _, path in found:
        state = torch.load(path, map_location="cpu", weights_only=True)  # the strict loader itself
        assert state["format"] == CHECKPOINT_FORMAT
        assert isinstance(state["rng"][0]["numpy"]["keys"], torch.Tensor)


def test_damaged_newest_checkpoints_are_skipped_with_a_warning(run, tmp_path, caplog):
    root, section = run
    ckdir = tmp_path / "part" / "checkpoints"
    ckdir.mkdir(parents=True)
    found = dict(list_checkpoints(root / "full" / "checkpoints"))
    shutil.copy(found[2], ckdir / found[2].name)
    data = found[3].read_bytes()
    (ckdir / found[3].name).write_bytes(data[: len(data) // 2])  # truncated mid-write
    (ckdir / found[4].name).write_bytes(b"")  # empty: a full disk
    with caplog.at_level(logging.WARNING):
        assert resolve_resume("latest", ckdir) == ckdir / found[2].name
    warned = [r.getMessage() for r in caplog.records if "skipping step" in r.getMessage()]
    assert len(warned) == 2 and "empty" in warned[0]
    result = train(_cfg(section, tmp_path / "part"), setup_runtime("cpu", "fp32"), resume="latest")
    assert result["step"] == 4


def test_pickle_payload_checkpoint_is_refused_and_never_run(run, tmp_path):
    root, section = run
    marker = tmp_path / "pwned"
    ckdir = tmp_path / "evil" / "checkpoints"
    ckdir.mkdir(parents=True)
    good = dict(list_checkpoints(root / "full" / "checkpoints"))[2]
    evil = torch.load(good, map_location="cpu", weights_only=True)
    evil["config"] = {"note": _TouchOnLoad(marker)}
    torch.save(evil, ckdir / "step-00000009.pt")  # dropped in as the newest checkpoint
    with pytest.raises(UnsafeCheckpoint, match="refused"):
        load_checkpoint(ckdir / "step-00000009.pt")
    with pytest.raises(TrainingError, match="refused"):
        train(_cfg(section, tmp_path / "evil"), setup_runtime("cpu", "fp32"), resume="latest")
    with pytest.raises(UnsafeCheckpoint):  # init_from and exports go through the same loader
        read_weights_file(ckdir / "step-00000009.pt")
    assert not marker.exists()
    # the payload is real: an unrestricted load would have run it
    torch.load(ckdir / "step-00000009.pt", map_location="cpu", weights_only=False)
    assert marker.exists()
