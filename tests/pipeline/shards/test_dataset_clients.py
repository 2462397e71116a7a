"""The final dataset read by the clients users already have, as they would call them.

Hugging Face ``datasets.load_dataset(folder)`` (the dataset card), open_clip's own
trainer (``sizes.json`` per split folder), and every zhclip reader on the split
layout and on the first, flat layout.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from zhclip.pipeline.cli import main as cli_main
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.demo.synthetic import ZH_CAPTIONS, Row, synthetic_url, write_download_shard
from zhclip.pipeline.shards import card, loading
from zhclip.pipeline.shards import format as SH
from zhclip.pipeline.shards import manifest as MF
from zhclip.pipeline.shards import reader as RD
from zhclip.pipeline.shards.verify import verify_dataset
from zhclip.training.data import list_shards

# --- a final dataset written by the real `zhclip score`, whose first samples hold nulls ---------
# Both splits start with five samples whose caption_orig and score are null
# (Wukong rows under the precomputed backend); later samples carry a string and a
# float there: the case where a client inferring types from the first samples
# types the columns as null and fails on the first real value.

N_ROWS = 56
VAL_FRACTION = 0.25
SAMPLES_PER_SHARD = 8
NULL_FIRST = 5  # the webdataset builder infers features from 5 samples


def null_first_rows() -> list[Row]:
    """Rows whose final order puts NULL_FIRST all-null samples at the head of each split."""
    keys = [f"k{i:04d}" for i in range(N_ROWS)]
    by_split: dict[str, list[str]] = {}
    for key in sorted(keys, key=SH.order_key):  # the position stage 3 gives each sample
        # stage 3 draws the split by image (the URL), so all captions of one image stay together
        by_split.setdefault(SH.split_for_key(synthetic_url(key), VAL_FRACTION), []).append(key)
    assert all(len(v) > NULL_FIRST + 2 for v in by_split.values()), "too few keys per split"
    rows = []
    for split_keys in by_split.values():
        for rank, key in enumerate(split_keys):
            caption = ZH_CAPTIONS[rank % len(ZH_CAPTIONS)]
            if rank < NULL_FIRST or rank % 3 == 0:
                rows.append(Row(key, source="wukong", caption=caption))
            elif rank % 3 == 1:
                rows.append(Row(key, source="laion_zh", caption=caption, similarity=0.3 + rank / 1000))
            else:
                rows.append(Row(key, source="coco_zh", caption=caption, caption_orig=f"a cat, take {rank}"))
    return rows


def score_config(out: Path) -> Path:
    cfg = out.parent / f"{out.name}.yaml"
    cfg.write_text(yaml.safe_dump({
        "output": str(out),
        "score": {"backend": "precomputed", "thresholds": {"laion_zh": 0.26}},
        "shards": {"samples_per_shard": SAMPLES_PER_SHARD, "val_fraction": VAL_FRACTION},
    }))
    return cfg


@pytest.fixture(scope="session")
def null_first_dataset(tmp_path_factory) -> Path:
    """OUT/dataset of `zhclip score` run on synthetic downloads (see the module docstring)."""
    root = tmp_path_factory.mktemp("null_first")
    rows = null_first_rows()
    write_download_shard(root / "downloads", "00000", rows[: N_ROWS // 2], seed=1)
    write_download_shard(root / "downloads", "00001", rows[N_ROWS // 2:], seed=2)
    out = root / "out"
    rc = cli_main(["score", "--config", str(score_config(out)), "--downloads",
                   str(root / "downloads"), "--quiet"])
    assert rc == 0
    return out / SH.DATASET_DIR


def _sidecar_rows(folder: Path, split: str) -> dict[str, dict]:
    return {r[S.KEY]: r for r in SH.read_dataset_table(str(folder), split).to_pylist()}


def test_splits_live_in_their_own_folders_with_sizes_json(null_first_dataset):
    folder = null_first_dataset
    manifest = SH.read_manifest(str(folder))
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "manifest.json", "train", "val"]
    for split in SH.SPLITS:
        tars = sorted(p.name for p in (folder / split).glob("*.tar"))
        assert tars and all(t.startswith(f"{split}-") for t in tars)
        sizes = json.loads((folder / split / SH.SIZES_NAME).read_text())
        # webdataset's sizes.json: every tar of the folder, with the count its tar really holds
        assert sizes == {t: sum(1 for _ in SH.iter_shard(str(folder / split / t))) for t in tars}
        assert sum(sizes.values()) == manifest["splits"][split]["samples"]
    names = {n for s in manifest["shards"] for n in s["files"]}
    assert all(re.fullmatch(r"(train|val)/\1-\d{6}\.(tar|parquet)", n) for n in names)
    assert verify_dataset(str(folder)) == []


def test_first_samples_hold_nulls(null_first_dataset):
    """The precondition of the HF test: the first five samples of each split are null there."""
    for split in SH.SPLITS:
        first_tar = SH.list_dataset_shards(str(null_first_dataset), split)[0]
        head = [s.meta for s in SH.iter_shard(first_tar)][:NULL_FIRST]
        assert len(head) == NULL_FIRST
        assert all(m[S.CAPTION_ORIG] is None and m[S.SCORE] is None for m in head)
        rows = _sidecar_rows(null_first_dataset, split).values()
        assert any(r[S.CAPTION_ORIG] for r in rows) and any(r[S.SCORE] is not None for r in rows)


def test_type_inference_without_the_card_fails(null_first_dataset, tmp_path):
    """What the card prevents: the builder types json fields from the first five samples."""
    import datasets

    files = {sp: SH.list_dataset_shards(str(null_first_dataset), sp) for sp in SH.SPLITS}
    with pytest.raises(Exception) as info:
        datasets.load_dataset("webdataset", data_files=files, cache_dir=str(tmp_path / "cache"))
    chain, err = [], info.value
    while err is not None:
        chain.append(str(err))
        err = err.__cause__ or err.__context__
    assert any("to null" in m for m in chain), chain  # "Couldn't cast array of type ... to null"


def test_load_dataset_on_the_folder_reads_both_splits_typed(null_first_dataset, tmp_path):
    import datasets
    from PIL import Image

    ds = datasets.load_dataset(str(null_first_dataset), cache_dir=str(tmp_path / "cache"))
    assert set(ds) == set(SH.SPLITS)  # the tars, not the parquet sidecars
    json_feature = ds["train"].features[S.MEMBER_JSON]
    assert {k: v.dtype for k, v in json_feature.items()} == dict(card.json_fields())
    assert json_feature[S.SCORE].dtype == "float64" and json_feature[S.WIDTH].dtype == "int64"
    assert isinstance(ds["train"].features[S.MEMBER_IMAGE], datasets.Image)
    for split in SH.SPLITS:
        want = _sidecar_rows(null_first_dataset, split)
        got = {r[S.MEMBER_JSON][S.KEY]: r for r in ds[split]}
        assert set(got) == set(want)
        for key, row in got.items():
            assert row[S.MEMBER_TEXT] == want[key][S.CAPTION]
            assert {c: row[S.MEMBER_JSON][c] for c in SH.JSON_FIELDS} == {c: want[key][c] for c in SH.JSON_FIELDS}
        first = ds[split][0]
        assert isinstance(first[S.MEMBER_IMAGE], Image.Image) and first[S.MEMBER_IMAGE].size == (64, 64)


def test_load_dataset_streaming(null_first_dataset):
    import datasets

    ds = datasets.load_dataset(str(null_first_dataset), streaming=True)
    for split in SH.SPLITS:
        rows = list(ds[split])
        assert len(rows) == SH.read_manifest(str(null_first_dataset))["splits"][split]["samples"]
        scores = [r[S.MEMBER_JSON][S.SCORE] for r in rows]
        assert scores[:NULL_FIRST] == [None] * NULL_FIRST
        assert any(isinstance(s, float) for s in scores)


# --- the first layout still reads -----------------------------------------------------------


def flatten_to_first_layout(folder: Path, dst: Path) -> Path:
    """A copy of ``folder`` as the first layout wrote it: every shard flat, names without split/."""
    dst.mkdir()
    manifest = SH.read_manifest(str(folder))
    for shard in manifest["shards"]:
        shard["files"] = {name.rpartition("/")[2]: v for name, v in shard["files"].items()}
        for name in shard["files"]:
            shutil.copy(folder / shard["split"] / name, dst / name)
    manifest["format"] = "zhclip-shards/1"
    (dst / SH.MANIFEST_NAME).write_bytes(MF.manifest_bytes(manifest))
    return dst


@pytest.mark.parametrize("with_manifest", [True, False])
def test_first_flat_layout_still_reads(null_first_dataset, tmp_path, with_manifest):
    flat = flatten_to_first_layout(null_first_dataset, tmp_path / "flat")
    if not with_manifest:
        (flat / SH.MANIFEST_NAME).unlink()
    want = [s.name for s in SH.dataset_shards(str(null_first_dataset))]
    shards = SH.dataset_shards(str(flat))
    assert [s.name for s in shards] == want
    assert all(Path(s.tar).parent == flat and Path(s.tar).is_file() for s in shards)
    train_tars = [s.tar for s in shards if s.split == "train"]
    if not with_manifest:  # training reads a folder without a manifest only when told to glob
        with pytest.raises(FileNotFoundError, match="train.data.glob"):
            list_shards(str(flat), "train")
    assert [sh.url for sh in list_shards(str(flat), "train", allow_glob=True)] == train_tars  # training
    assert loading.webdataset_urls(str(flat), "train") == train_tars  # loaders
    opened = RD.open_folder(str(flat))  # inspection
    assert opened.kind == RD.KIND_DATASET and [r.name for r in opened.shards] == want
    assert all(r.tar and r.parquet for r in opened.shards)
    if with_manifest:
        assert verify_dataset(str(flat)) == []


def test_split_layout_without_manifest_reads(null_first_dataset, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(null_first_dataset, copy)
    (copy / SH.MANIFEST_NAME).unlink()
    want = [s.name for s in SH.dataset_shards(str(null_first_dataset))]
    assert [s.name for s in SH.dataset_shards(str(copy))] == want
    assert [r.name for r in RD.open_folder(str(copy)).shards] == want
    assert [Path(sh.url).parent.name for sh in list_shards(str(copy), "val", allow_glob=True)] == ["val"] * len(
        [n for n in want if n.startswith("val")])


def test_rerun_removes_flat_leftovers_of_the_first_layout(null_first_dataset, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(null_first_dataset, copy)
    (copy / "train-000000.tar").write_bytes(b"left by a first-layout run")
    manifest = SH.read_manifest(str(copy))
    _, stale = MF.finish_dataset(str(copy), manifest["shards"], manifest["config"])
    assert stale == ["train-000000.tar"] and not (copy / "train-000000.tar").exists()
    assert verify_dataset(str(copy)) == []


# --- open_clip's own trainer ------------------------------------------------------------------

TINY_OPEN_CLIP = {
    "model_cfg": {
        "embed_dim": 16,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    },
    "preprocess_cfg": {"size": 32},
}


# webdataset >= 0.2.96 ends every shard with an EOF marker ({}) that open_clip_train's
# group_by_keys_nothrow (3.3.0) reads as a sample: KeyError 'fname' (webdataset
# issue #384, open_clip issue #935). Where that pair is installed, the trainer
# runs with the fix they give (eof_value=None), and otherwise unchanged.
EOF_SHIM = (
    "import functools, sys, runpy, webdataset.tariterators as T, open_clip_train.data as D; "
    "D.tar_file_expander = functools.partial(T.tar_file_expander, eof_value=None); "
    "sys.argv = ['open_clip_train.main', *sys.argv[1:]]; "
    "runpy.run_module('open_clip_train.main', run_name='__main__')"
)


def open_clip_train_command() -> list[str]:
    """``python -m open_clip_train.main``, with the EOF fix where webdataset needs it."""
    import inspect

    import webdataset.tariterators as tariterators

    if "eof_value" in inspect.signature(tariterators.tar_file_expander).parameters:
        return [sys.executable, "-c", EOF_SHIM]
    return [sys.executable, "-m", "open_clip_train.main"]


@pytest.mark.slow
def test_open_clip_trainer_runs_an_epoch_on_the_train_split(null_first_dataset, tmp_path):
    """`python -m open_clip_train.main --dataset-type webdataset`, no --train-num-samples."""
    pytest.importorskip("open_clip_train")
    model_dir = tmp_path / "tiny-open-clip"
    model_dir.mkdir()
    (model_dir / "open_clip_config.json").write_text(json.dumps(TINY_OPEN_CLIP))
    train = SH.dataset_shards(str(null_first_dataset), "train")
    n_train = sum(s.samples for s in train)
    pattern = f"{null_first_dataset}/train/train-{{000000..{len(train) - 1:06d}}}.tar"
    cmd = [*open_clip_train_command(), "--model", f"local-dir:{model_dir}",
           "--train-data", pattern, "--dataset-type", "webdataset", "--epochs", "1",
           "--batch-size", "4", "--workers", "1", "--lr", "1e-3", "--warmup", "1", "--device", "cpu",
           "--precision", "fp32", "--logs", str(tmp_path / "logs"), "--name", "zhclip-tiny",
           "--save-frequency", "1", "--zeroshot-frequency", "0", "--log-every-n-steps", "1", "--seed", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "WANDB_MODE": "disabled"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    # open_clip sized the epoch from train/sizes.json (rounded up to whole batches of 4):
    # "Train Epoch: 0 [ 4/32 (12%)] ... [32/32 (100%)]"
    per_epoch = math.ceil(n_train / 4) * 4
    assert re.search(rf"Train Epoch: 0 \[\s*4/{per_epoch} ", log), log[-4000:]
    assert f"[{per_epoch}/{per_epoch} (100%)]" in log
    assert (tmp_path / "logs" / "zhclip-tiny" / "checkpoints" / "epoch_1.pt").is_file()
