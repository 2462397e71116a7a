"""`zhclip run` with sources and OUT on gs://, against gcp-storage-emulator.

The demo sample is uploaded to a bucket; the same config runs once with local
paths and once with gs:// paths (same loopback image server, so the same URLs),
and the final shards must be byte-identical. Then `zhclip shards verify/ls/head`
read the gs:// dataset.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from zhclip.pipeline.core import paths

from .cluster_runs import file_bytes, gs_config, run_twice, upload_folder, write_config, zhclip


def dataset_bytes(root: str) -> dict[str, bytes]:
    """Every tar, parquet and sizes.json under root/dataset, by relative path."""
    files = file_bytes(paths.join(root, "dataset"))
    return {k: v for k, v in files.items() if k.endswith((".tar", ".parquet", "sizes.json"))}


@pytest.mark.slow
def test_run_on_gcs_writes_the_same_shards_as_a_local_run(tmp_path: Path, gcs_bucket: str):
    def on_gcs(cfg, sample):
        upload_folder(sample, f"gs://{gcs_bucket}/sample")
        return gs_config(cfg, sample, gcs_bucket, "run"), f"gs://{gcs_bucket}/run"

    local_root, out, gs_cfg = run_twice(tmp_path, on_gcs, [])
    local_files, gs_files = dataset_bytes(local_root), dataset_bytes(out)
    assert any(name.endswith(".tar") for name in local_files)
    assert sorted(gs_files) == sorted(local_files)
    assert all(gs_files[name] == local_files[name] for name in local_files)
    for name in ("manifest.json", "README.md"):
        assert paths.exists(f"{out}/dataset/{name}"), name
    for name in ("metadata.json", "download.json", "score.json"):
        assert paths.exists(f"{out}/report/{name}"), name
    assert paths.list_files(f"{out}/rejects", ".parquet")
    assert paths.exists(f"{out}/metadata/_COMMITTED.json")

    verify = zhclip("shards", "verify", f"{out}/dataset")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    listing = zhclip("shards", "ls", f"{out}/dataset")
    assert listing.returncode == 0 and "train" in listing.stdout, listing.stderr
    head = zhclip("shards", "head", f"{out}/dataset")
    assert head.returncode == 0, head.stderr
    assert any(src in head.stdout for src in ("laion_zh", "wukong", "coco_zh", "vg_zh")), (
        head.stdout
    )

    # Training reads the gs:// shards through the same reader (tiny towers, a few steps).
    from zhclip.training.tiny import write_tiny_bert, write_tiny_image_tower

    models = tmp_path / "models"
    train = {
        "image": write_tiny_image_tower(models / "image", name="zhclip-gcs-vit", image_size=32),
        "text": {"model": str(write_tiny_bert(models / "text", ["一只猫", "一条狗"], hidden=32))},
        "context_length": 32,
        "data": {
            "path": f"{out}/dataset",
            "workers": 0,
            "shuffle_buffer": 16,
            "auto_augment": False,
        },
        "stage1": {"steps": 2, "batch_size": 8, "warmup": 1},
        "stage2": {"steps": 2, "batch_size": 8, "warmup": 1},
        "output": str(tmp_path / "train_run"),
        "eval_at_start": False,
        "eval_every": 1000,
        "log_every": 1,
        "precision": "fp32",
        "device": "cpu",
    }
    gs_cfg["train"] = train
    trained = zhclip("train", "--config", str(write_config(gs_cfg, tmp_path / "train.yaml")))
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert any((tmp_path / "train_run").rglob("*.pt"))
