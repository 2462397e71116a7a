"""The installed package lives under one name, ``zhclip``: it installs no
top-level ``pipeline``/``training``/``filters``/``blacklist``, and a user's own
folders of those names (next to their script, on sys.path first) never
shadow it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
ZHCLIP = Path(sys.executable).parent / "zhclip"
GENERIC = ("pipeline", "training", "filters", "blacklist")


def test_wheel_holds_only_the_zhclip_namespace(tmp_path):
    work = tmp_path / "src"
    shutil.copytree(REPO, work, ignore=shutil.ignore_patterns(
        ".venv", "runs", ".git", "*.egg-info", "__pycache__", "build"))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(work)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("zhclip-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names}
    assert tops == {"zhclip", next(t for t in tops if t.endswith(".dist-info"))}, tops
    assert "zhclip/__init__.py" not in names  # a namespace package
    assert "zhclip/pipeline/metadata/job.py" in names
    assert any(n.startswith("zhclip/blacklist/lists/") and n.endswith(".txt") for n in names)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "zhclip = zhclip.pipeline.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def _user_folders(root: Path) -> None:
    """A user's project with packages named like our folders, each of which
    fails loudly when imported."""
    for name in GENERIC:
        pkg = root / name
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text(f"raise ImportError('the user\\'s own {name} package')\n")


def test_user_folders_named_like_ours_do_not_shadow_zhclip(tmp_path):
    from zhclip.pipeline.demo.sample import generate_sample, sample_config

    project = tmp_path / "project"
    _user_folders(project)
    generate_sample(project / "sample", "http://127.0.0.1:9/images", n_images=24)
    cfg = sample_config(project / "sample", project / "out")
    (project / "demo.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    # The console script, and `python -m` with the project folder first on sys.path.
    for cmd in ([str(ZHCLIP), "metadata", "--config", "demo.yaml"],
                [sys.executable, "-m", "zhclip.pipeline.cli", "metadata", "--config", "demo.yaml",
                 "--set", "output=out2"]):
        proc = subprocess.run(cmd, cwd=project, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "user's own" not in proc.stderr
    report = json.loads((project / "out" / "report" / "metadata.json").read_text())
    assert report["total"]["kept"] > 0 and report["total"]["balanced"]
    assert sorted(p.name for p in (project / "out" / "metadata").glob("*.parquet"))
