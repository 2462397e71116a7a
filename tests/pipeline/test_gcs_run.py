"""`zhclip run` with sources and OUT on gs://, against gcp-storage-emulator.

The demo sample is uploaded to a bucket; the same config runs once with local
paths and once with gs:// paths (same loopback image server, so the same URLs),
and the final shards must be byte-identical. Then `zhclip shards verify/ls/head`
read the gs:// dataset.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import yaml
from zhclip.pipeline.core import paths
from zhclip.pipeline.demo.run import serve_folder
from zhclip.pipeline.demo.sample import generate_sample, sample_config

ZHCLIP = [sys.executable, "-m", "zhclip.pipeline.cli"]


def zhclip(
    *argv: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*ZHCLIP, *argv], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout
    )


def upload_folder(local: Path, uri: str) -> None:
    fs, inner = paths.filesystem_for(uri)
    pafs.copy_files(
        str(local), inner, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs
    )


def gs_config(local_cfg: dict, sample: Path, bucket: str, run: str) -> dict:
    text = json.dumps(local_cfg).replace(str(sample), f"gs://{bucket}/sample")
    data = json.loads(text)
    data["output"] = f"gs://{bucket}/{run}"
    return data


def write_config(data: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


def gs_file_bytes(root: str) -> dict[str, bytes]:
    """Every file under ``root`` (local or gs://), by path relative to it."""
    fs, inner = paths.filesystem_for(root)
    infos = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
    out = {}
    for info in infos:
        if info.type == pafs.FileType.File:
            with fs.open_input_stream(info.path) as f:
                out[info.path[len(inner) + 1 :]] = f.read()
    return out


def dataset_bytes(root: str) -> dict[str, bytes]:
    """Every tar, parquet and sizes.json under root/dataset, by relative path."""
    files = gs_file_bytes(paths.join(root, "dataset"))
    return {k: v for k, v in files.items() if k.endswith((".tar", ".parquet", "sizes.json"))}


@pytest.mark.slow
def test_run_on_gcs_writes_the_same_shards_as_a_local_run(tmp_path: Path, gcs_bucket: str):
    sample = tmp_path / "sample"
    sample.mkdir()
    with serve_folder(sample) as base_url:
        generate_sample(sample, base_url, n_images=60)
        upload_folder(sample, f"gs://{gcs_bucket}/sample")
        local_cfg = sample_config(sample, tmp_path / "local")
        local = zhclip(
            "run",
            "--config",
            str(write_config(local_cfg, tmp_path / "local.yaml")),
            "--quiet",
            "--no-progress",
        )
        assert local.returncode == 0, local.stderr[-3000:]
        gs_cfg = gs_config(local_cfg, sample, gcs_bucket, "run")
        remote = zhclip(
            "run",
            "--config",
            str(write_config(gs_cfg, tmp_path / "gs.yaml")),
            "--quiet",
            "--no-progress",
        )
        assert remote.returncode == 0, remote.stderr[-3000:]

    out = f"gs://{gcs_bucket}/run"
    local_files, gs_files = dataset_bytes(str(tmp_path / "local")), dataset_bytes(out)
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
    from zhclip.training.cli import demo_train_section

    train = demo_train_section(tmp_path / "train_run", ["一只猫", "一条狗", "红色的圆形"], 4)
    train.update(
        data={**train["data"], "path": f"{out}/dataset"},
        eval_at_start=False,
        eval_every=1000,
        log_every=1,
    )
    gs_cfg["train"] = train
    trained = zhclip("train", "--config", str(write_config(gs_cfg, tmp_path / "train.yaml")))
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert any((tmp_path / "train_run" / "train").rglob("*.pt"))
