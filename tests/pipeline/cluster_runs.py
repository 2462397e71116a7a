"""Helpers for the cluster-rehearsal tests: zhclip in a child process, the demo sample run twice.

Each rehearsal runs `zhclip run` on the demo sample once in process with local
paths (the reference) and once the way under test (gs://, a worker pool), with
the same loopback image server, so both see the same URLs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow.fs as pafs
import yaml
from zhclip.pipeline.core import paths
from zhclip.pipeline.demo.run import serve_folder
from zhclip.pipeline.demo.sample import generate_sample, sample_config

ZHCLIP = [sys.executable, "-m", "zhclip.pipeline.cli"]
SAMPLE_IMAGES = 60


def zhclip(*argv: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*ZHCLIP, *argv], capture_output=True, text=True, timeout=timeout)


def upload_folder(local: Path, uri: str) -> None:
    fs, inner = paths.filesystem_for(uri)
    pafs.copy_files(
        str(local), inner, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs
    )


def gs_config(local_cfg: dict, sample: Path, bucket: str, run: str) -> dict:
    """``local_cfg`` with the sample read from gs://bucket/sample and OUT at gs://bucket/run."""
    data = json.loads(json.dumps(local_cfg).replace(str(sample), f"gs://{bucket}/sample"))
    data["output"] = f"gs://{bucket}/{run}"
    return data


def write_config(data: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


def file_bytes(root: str) -> dict[str, bytes]:
    """Every file under ``root`` (local or gs://), by path relative to it."""
    fs, inner = paths.filesystem_for(root)
    out = {}
    for info in fs.get_file_info(pafs.FileSelector(inner, recursive=True)):
        if info.type == pafs.FileType.File:
            with fs.open_input_stream(info.path) as f:
                out[info.path[len(inner) + 1 :]] = f.read()
    return out


# The second run's config and OUT, from the reference config and the sample folder.
SecondRun = Callable[[dict, Path], tuple[dict, str]]


def run_twice(tmp_path: Path, second: SecondRun, flags: list[str]) -> tuple[str, str, dict]:
    """The demo sample in process, then as ``second`` says with ``flags``.

    Returns both OUT roots and the second run's config.
    """

    def run(cfg: dict, name: str, *extra: str) -> None:
        config = str(write_config(cfg, tmp_path / name))
        done = zhclip("run", "--config", config, "--quiet", "--no-progress", *extra)
        assert done.returncode == 0, done.stderr[-3000:]

    sample = tmp_path / "sample"
    sample.mkdir()
    with serve_folder(sample) as base_url:
        generate_sample(sample, base_url, n_images=SAMPLE_IMAGES)
        cfg = sample_config(sample, tmp_path / "in_process")
        run(cfg, "a.yaml")
        other_cfg, other_root = second(cfg, sample)
        run(other_cfg, "b.yaml", *flags)
    return str(tmp_path / "in_process"), other_root, other_cfg
