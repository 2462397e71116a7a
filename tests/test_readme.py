"""The README cannot rot: its marked command blocks run, and its config reference is current.

Blocks marked ``<!-- readme-test -->`` run in order with bash in a scratch
folder that looks like a checkout after ``make demo``: configs/ copied in, the
demo sample generated under runs/demo/sample and served on loopback.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from zhclip.pipeline.core.config_doc import with_reference
from zhclip.pipeline.demo.run import serve_folder
from zhclip.pipeline.demo.sample import generate_sample

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
BLOCK_RE = re.compile(r"<!-- readme-test -->\s*```bash\n(.*?)```", re.S)


def test_readme_starts_with_the_two_commands():
    first_block = README.split("```bash\n", 1)[1].split("```", 1)[0]
    assert "make demo" in first_block and "make test" in first_block
    assert README.index("make demo") < README.index("## ")


def test_config_reference_is_generated_and_current():
    assert with_reference(README) == README, "run: python -m zhclip.pipeline.core.config_doc --write README.md"


def test_marked_blocks_run(tmp_path):
    blocks = BLOCK_RE.findall(README)
    assert len(blocks) >= 3
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    venv_bin = Path(sys.executable).parent
    os.symlink(venv_bin.parent, tmp_path / ".venv")  # the README calls .venv/bin/python
    env = dict(os.environ, PATH=f"{venv_bin}{os.pathsep}{os.environ['PATH']}",
               HF_HUB_OFFLINE="1")
    sample = tmp_path / "runs" / "demo" / "sample"
    with serve_folder(sample) as base_url:
        generate_sample(sample, base_url, n_images=64)
        for i, block in enumerate(blocks):
            proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=600)
            if proc.returncode != 0:
                pytest.fail(f"README block {i} failed ({proc.returncode}):\n{block}\n"
                            f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}")
    assert (tmp_path / "runs" / "readme" / "dataset" / "manifest.json").is_file()
