"""Exact resume on the simulated web: ``kill -9`` of stage 2 and of stage 3 part-way, a rerun,
and the result identical to an uninterrupted run (small sizes; bench/scale.py does it at scale)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.demo.simweb import SimWeb
from zhclip.pipeline.demo.simweb_spec import plan
from zhclip.pipeline.demo.synthetic import standard_downloads
from zhclip.pipeline.shards import format as SH

ZHCLIP = str(Path(sys.executable).parent / "zhclip")
# What a downloaded sample is; error messages are left out (they carry byte counts).
SAMPLE_COLUMNS = ["key", "status", "error_class", "sha256", "width", "height"]


def _write_shards(out: Path, urls: list[str], per_shard: int) -> None:
    (out / "metadata").mkdir(parents=True)
    rows = [
        {S.KEY: f"sim:{i:05d}", S.URL: u, S.CAPTION: f"第{i}张", S.SOURCE: "simweb"}
        for i, u in enumerate(urls)
    ]
    for s in range(0, len(rows), per_shard):
        table = S.conform(pa.Table.from_pylist(rows[s : s + per_shard]), S.METADATA_SCHEMA)
        pq.write_table(table, out / "metadata" / f"{s // per_shard:05d}.parquet")


def _config(path: Path, out: Path, **extra) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "output": str(out),
                "filters": {"urls": {"allow_networks": ["127.0.0.0/8"]}},
                "download": {"timeout": 3, "retries": 0, "thread_count": 4, "image_size": 64},
                **extra,
            }
        )
    )
    return path


def _run(cfg: Path, stage: str) -> None:
    subprocess.run(
        [ZHCLIP, stage, "--config", str(cfg), "--no-progress", "--quiet"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=300,
    )


def _kill_when(kill_when_ready, cfg: Path, stage: str, ready, timeout: float = 120) -> None:
    """Start ``zhclip STAGE``; SIGKILL its process group once ``ready()`` (it must still run)."""
    kill_when_ready([ZHCLIP, stage, "--config", str(cfg), "--no-progress", "--quiet"], ready,
                    timeout, what=stage)


def _downloads(out: Path) -> tuple[list, dict]:
    folder = out / "downloads"
    rows = sorted(
        (
            r
            for p in folder.glob("*.parquet")
            for r in pq.read_table(p, columns=SAMPLE_COLUMNS).to_pylist()
        ),
        key=lambda r: r["key"],
    )
    members = {}
    for p in folder.glob("*.tar"):
        with tarfile.open(p) as tar:
            for m in tar:
                members[(p.name, m.name)] = hashlib.sha256(tar.extractfile(m).read()).hexdigest()
    return rows, members


@pytest.mark.slow
def test_stage2_killed_half_way_then_rerun_equals_the_uninterrupted_run(tmp_path, kill_when_ready):
    with SimWeb(hosts=4, prewarm=False) as web:
        # Small images and no hangs, so the test is quick; every other outcome is in the mix.
        urls = [
            u
            for u in web.urls(260)
            if plan("/" + u.split("/", 3)[3]).outcome != "hang"
            and plan("/" + u.split("/", 3)[3]).width <= 480
        ][:90]
        killed, reference = tmp_path / "killed", tmp_path / "reference"
        for out in (killed, reference):
            _write_shards(out, urls, per_shard=15)
        cfg = _config(tmp_path / "k.yaml", killed)
        shards = len(list((killed / "metadata").glob("*.parquet")))
        _kill_when(
            kill_when_ready,
            cfg,
            "download",
            lambda: len(list((killed / "downloads").glob("*_stats.json"))) >= shards // 2,
        )
        done = len(list((killed / "downloads").glob("*_stats.json")))
        assert 1 <= done < shards
        _run(cfg, "download")
        _run(_config(tmp_path / "r.yaml", reference), "download")
    rows, members = _downloads(killed)
    assert len(rows) == len(urls) and rows == _downloads(reference)[0]
    assert members == _downloads(reference)[1]
    assert sum(r["status"] == "success" for r in rows) >= len(urls) // 2
    for stats in (reference / "downloads").glob("*_stats.json"):
        fetch = json.loads(stats.read_text())["zhclip"]["fetch"]
        assert 1 <= fetch["dns_lookups"] <= 4  # one lookup per host per shard
        # No URL held a thread past its deadline (three timeouts by default) by more than a tick.
        assert 0 < fetch["longest_fetch_s"] <= fetch["deadline_s"] + 1.0 == 3 * 3 + 1.0, fetch


def _dataset(out: Path) -> dict[str, bytes]:
    folder = out / SH.DATASET_DIR
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix in (".tar", ".parquet")
    }


@pytest.mark.slow
def test_stage3_killed_half_way_then_rerun_equals_the_uninterrupted_run(tmp_path, kill_when_ready):
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    for out in (killed, reference):
        standard_downloads(out / SH.DOWNLOADS_DIR, n_shards=4, per_shard=10)
    score = {
        "score": {"backend": "precomputed"},
        "shards": {"samples_per_shard": 7, "val_fraction": 0.2},
    }
    started = time.monotonic()
    _run(_config(tmp_path / "r.yaml", reference, **score), "score")
    half = (time.monotonic() - started) / 2
    cfg = _config(tmp_path / "k.yaml", killed, **score)
    t0 = time.monotonic()
    _kill_when(kill_when_ready, cfg, "score", lambda: time.monotonic() - t0 >= half)
    _run(cfg, "score")
    got, want = _dataset(killed), _dataset(reference)
    assert got and got == want
