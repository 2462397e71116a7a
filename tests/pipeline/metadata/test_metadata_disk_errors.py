"""A full disk and a bad config value each end `zhclip metadata` in one line, leaving no temp files."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from zhclip.pipeline.cli import main as zhclip


def _config(tmp_path: Path, n: int = 20000) -> Path:
    pq.write_table(pa.table({"URL": [f"http://h{i}.example.com/{i}.jpg" for i in range(n)],
                             "TEXT": [f"一只猫在沙发上睡觉很舒服{i}" for i in range(n)],
                             "LANGUAGE": ["zh"] * n}), tmp_path / "a.parquet")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"output": str(tmp_path / "out"), "sources": [
        {"name": "laion_zh", "kind": "laion", "paths": [str(tmp_path / "a.parquet")]}]}))
    return cfg


def _small_files_only() -> None:
    """In the child: any file past 200 kB fails with EFBIG, as a full disk fails with ENOSPC."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))


def test_disk_full_is_one_line_and_leaves_no_temp_files(tmp_path):
    cfg = _config(tmp_path)
    run = subprocess.run([sys.executable, "-m", "zhclip.pipeline.cli", "metadata", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=300, preexec_fn=_small_files_only)
    assert run.returncode == 1, run.stderr[-2000:]
    lines = [x for x in run.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert lines[0].startswith("zhclip metadata: error: File too large")
    # Only the marker that says a stage-1 run started and never committed stays, so
    # `zhclip download` refuses the folder instead of reading a partial run.
    leftovers = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert [p.name for p in leftovers] == ["_STARTED.json"]


def test_bad_allow_networks_entry_is_one_config_line(tmp_path, capsys):
    cfg = _config(tmp_path, n=3)
    rc = zhclip(["metadata", "--config", str(cfg), "--set", "filters.urls.allow_networks=[127.0.0.0/8, lan]"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "filters.urls.allow_networks" in err and "'lan' is not a network" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 2  # the config-error header + the key
