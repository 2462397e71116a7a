"""The sdist Dataflow builds from --setup_file must carry the blacklist data."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_sdist_contains_blacklists_and_no_tests(tmp_path):
    work = tmp_path / "src"
    # Build from a copy, as Dataflow's stager does, so the checkout stays clean.
    shutil.copytree(REPO, work, ignore=shutil.ignore_patterns(".venv", "runs", ".git", "*.egg-info", "__pycache__"))
    proc = subprocess.run(
        [sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(tmp_path / "dist")],
        cwd=work, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (sdist,) = (tmp_path / "dist").glob("zhclip-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
    lists = [n for n in names if "/blacklist/lists/" in n and n.endswith(".txt")]
    assert {Path(n).stem for n in lists} >= {"advertising", "filenames", "watermark", "contact"}
    assert any(n.endswith("pipeline/metadata/job.py") for n in names)
    assert not any("/tests/" in n for n in names)


def test_console_script_is_declared():
    text = (REPO / "setup.py").read_text()
    assert "zhclip=zhclip.pipeline.cli:main" in text
    exe = Path(sys.executable).parent / "zhclip"
    if exe.exists():  # installed with pip install -e .
        proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and "metadata" in proc.stdout
