"""Stage 1's URL shards downloaded by img2dataset's own CLI, then `zhclip score`.

The demo sample is served on loopback; `zhclip run` gives the reference final
shards, and the plain `img2dataset` command (the one README gives) on the same
OUT/metadata, scored by `zhclip score --downloads`, must give the same keys,
splits and sources: the stable key travels in ``zhclip_key``, a column
img2dataset does not reserve.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from zhclip.pipeline.cli import main as cli_main
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.demo.run import serve_folder
from zhclip.pipeline.demo.sample import generate_sample, sample_config
from zhclip.pipeline.shards import format as SH
from zhclip.pipeline.shards.verify import verify_dataset

# What README tells a user to pass (key, width and height are img2dataset's own).
pytestmark = pytest.mark.slow  # a demo run, an img2dataset run and two score runs: ~3 min on 2 cores

SAVE_COLUMNS = [S.ZHCLIP_KEY, S.SOURCE, S.SOURCE_ID, S.CAPTION_ORIG, S.SIMILARITY, S.LICENSE, S.NSFW]


def img2dataset_cli() -> list[str]:
    """The `img2dataset` console script, or its entry point run the same way."""
    for candidate in (Path(sys.executable).parent / "img2dataset", shutil.which("img2dataset")):
        if candidate and Path(candidate).is_file():
            return [str(candidate)]
    return [sys.executable, "-c", "import sys; from img2dataset import main; sys.exit(main())"]


def img2dataset_command(metadata: Path, output: Path, dcfg: dict) -> list[str]:
    return [*img2dataset_cli(), "--url_list", str(metadata), "--input_format", "parquet",
            "--url_col", "url", "--caption_col", "caption",
            "--save_additional_columns", json.dumps(SAVE_COLUMNS),
            "--output_format", "webdataset", "--output_folder", str(output),
            "--image_size", str(dcfg["image_size"]), "--resize_mode", "center_crop",
            "--encode_quality", "95", "--compute_hash", "sha256",
            "--processes_count", "1", "--thread_count", "8", "--timeout", str(dcfg["timeout"]),
            "--retries", "0", "--distributor", "multiprocessing", "--enable_wandb", "False"]


def _write_config(cfg: dict, path: Path) -> Path:
    path.write_text(json.dumps(cfg))
    return path


@pytest.fixture(scope="module")
def both_downloads(tmp_path_factory):
    """(zhclip-run OUT, img2dataset download folder, its score config) on one sample."""
    root = tmp_path_factory.mktemp("i2d_cli")
    sample = root / "sample"
    with serve_folder(sample) as base_url:
        generate_sample(sample, base_url, n_images=64)
        cfg = sample_config(sample, root / "out")
        assert cli_main(["run", "--config", str(_write_config(cfg, root / "zhclip.json")),
                         "--no-progress"]) == 0
        i2d = root / "i2d"
        proc = subprocess.run(img2dataset_command(root / "out" / "metadata", i2d, cfg["download"]),
                              capture_output=True, text=True, timeout=300, cwd=root,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    i2d_cfg = _write_config({**cfg, "output": str(root / "out_i2d")}, root / "i2d.json")
    return root / "out", i2d, i2d_cfg


def test_img2dataset_keeps_its_own_keys_and_carries_ours(both_downloads):
    _, i2d, _ = both_downloads
    table = pq.read_table(sorted(i2d.glob("*.parquet"))[0])
    assert table.column(S.KEY).to_pylist()[0].isdigit()  # img2dataset's positional key
    assert set(SAVE_COLUMNS) <= set(table.column_names)
    assert all(k for k in table.column(S.ZHCLIP_KEY).to_pylist())


def test_score_on_img2dataset_output_gives_the_same_final_keys(both_downloads):
    out, i2d, i2d_cfg = both_downloads
    assert cli_main(["score", "--config", str(i2d_cfg), "--downloads", str(i2d), "--quiet"]) == 0
    i2d_out = Path(json.loads(i2d_cfg.read_text())["output"])
    for split in SH.SPLITS:
        want = SH.read_dataset_table(str(out / SH.DATASET_DIR), split).to_pylist()
        got = SH.read_dataset_table(str(i2d_out / SH.DATASET_DIR), split).to_pylist()
        assert want, f"no {split} samples in the reference run"
        assert [r[S.KEY] for r in got] == [r[S.KEY] for r in want]
        assert [(r[S.SOURCE], r[S.SCORE], r[S.CAPTION_ORIG]) for r in got] == [
            (r[S.SOURCE], r[S.SCORE], r[S.CAPTION_ORIG]) for r in want]
    sources = {r[S.SOURCE] for r in SH.read_dataset_table(str(i2d_out / SH.DATASET_DIR)).to_pylist()}
    assert {"laion_zh", "wukong", "coco_zh", "vg_zh"} <= sources  # no "unknown"
    report = json.loads((i2d_out / "report" / "score.json").read_text())
    assert report["sources"]["laion_zh"]["reasons"].get("low_similarity", 0) > 0  # 0.26 rule ran
    assert verify_dataset(str(i2d_out / SH.DATASET_DIR)) == []


def test_score_stops_naming_the_missing_columns(both_downloads, tmp_path, capsys):
    """img2dataset run without --save_additional_columns: no source, so no per-source rules."""
    _, i2d, i2d_cfg = both_downloads
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in i2d.iterdir():
        if f.suffix == ".parquet":
            table = pq.read_table(f)
            pq.write_table(table.drop_columns([c for c in SAVE_COLUMNS if c in table.column_names]),
                           bare / f.name)
        elif f.is_file():
            shutil.copy(f, bare / f.name)
    rc = cli_main(["score", "--config", str(i2d_cfg), "--downloads", str(bare), "--quiet",
                   "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "no column source" in err and "--save_additional_columns" in err and S.ZHCLIP_KEY in err
    assert not (tmp_path / "out" / SH.DATASET_DIR).exists()  # stopped before writing anything
