"""Per-stage installs: stages 1 and 2 never import the torch stack, and a
command whose extra is missing names the pip install that fixes it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "torchvision", "transformers", "open_clip", "multilingual_clip")

# Makes the torch stack unimportable in a child process, as in a base install.
BLOCK_TORCH = (
    "import sys, importlib.abc\n"
    "class Block(importlib.abc.MetaPathFinder):\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    f"        if name.split('.')[0] in {HEAVY!r}:\n"
    "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
    "sys.meta_path.insert(0, Block())\n"
)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


STAGE_1_AND_2 = ("zhclip.pipeline.cli", "zhclip.pipeline.metadata.job",
                 "zhclip.pipeline.download.job", "zhclip.pipeline.download.worker")


def test_stage_1_and_2_commands_never_import_the_torch_stack():
    """Importing their modules and building their flags (what `zhclip metadata`
    and `zhclip download` do before running) loads no torch, transformers or open_clip."""
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in STAGE_1_AND_2)
        + "from zhclip.pipeline.cli import build_parser\n"
        + "build_parser('metadata'); build_parser('download')\n"
        + f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = _run(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_a_command_without_its_extra_names_the_pip_install():
    """With the torch stack unimportable, `zhclip train` and `zhclip export`
    stop with exit 2 and the exact pip install, not a traceback."""
    out = _run(BLOCK_TORCH + "from zhclip.pipeline.cli import main\n"
               "print(main(['train', '--config', 'none.yaml']), main(['export']))\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2", "2"]
    lines = out.stderr.strip().splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["zhclip train", "zhclip export"]
    for line in lines:
        assert line.endswith("pip install 'zhclip[train]'"), line
        assert "needs torch" in line or "needs transformers" in line or "needs open_clip" in line


def test_an_import_error_inside_a_running_command_gets_the_same_advice():
    """The scorer imports torch only when it is built, after `zhclip score` started."""
    from zhclip.pipeline.cli import missing_extra_message

    msg = missing_extra_message("score", ModuleNotFoundError("No module named 'torch'", name="torch"))
    assert msg == ("zhclip score: needs torch, which this install lacks; "
                   "install it with: pip install 'zhclip[score]'")
    beam = ModuleNotFoundError("No module named 'torch' [while running 'ScoreShard/ParDo(ScoreShard)']")
    assert missing_extra_message("score", beam) == msg
    assert "pip install" not in missing_extra_message("metadata", ModuleNotFoundError(name="x"))


def test_score_without_torch_says_so_in_one_line_before_any_worker_starts(tmp_path):
    """Before, the workers' setup failed first: Beam logged a traceback per worker, then the advice."""
    code = (
        BLOCK_TORCH
        + "from pathlib import Path\n"
        + "from zhclip.pipeline.demo.synthetic import Row, write_download_shard\n"
        + f"write_download_shard(Path({str(tmp_path / 'out' / 'downloads')!r}), '00000', [Row('wukong_a')])\n"
        + "from zhclip.pipeline.cli import main\n"
        + f"print(main(['score', '--output', {str(tmp_path / 'out')!r}, '--set', 'score.backend=mclip']))\n"
    )
    out = _run(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "2"
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        "zhclip score: needs torch, which this install lacks; install it with: pip install 'zhclip[score]'")
    assert not (tmp_path / "out" / "dataset").exists()
