"""`zhclip run` end to end: sample on a loopback server -> final shards."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow.compute as pc
import pytest
from zhclip.pipeline.cli import main as cli_main
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.demo.run import serve_folder
from zhclip.pipeline.demo.sample import generate_sample, sample_config
from zhclip.pipeline.shards import format as SH
from zhclip.pipeline.shards.verify import verify_dataset


@pytest.fixture(scope="module")
def run_out(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    sample = root / "sample"
    with serve_folder(sample) as base_url:
        generate_sample(sample, base_url, n_images=96)
        cfg = root / "config.json"
        cfg.write_text(json.dumps(sample_config(sample, root / "out")))
        rc = cli_main(["run", "--config", str(cfg), "--no-progress"])
    return rc, root / "out"


def test_run_writes_verified_final_shards(run_out):
    rc, out = run_out
    assert rc == 0
    manifest = json.loads((out / "dataset" / "manifest.json").read_text())
    assert manifest["shards"] and sum(s["samples"] for s in manifest["shards"]) > 0
    assert verify_dataset(str(out / "dataset")) == []
    splits = {s["split"] for s in manifest["shards"]}
    assert splits == {"train", "val"}


def test_accounting_chains_across_stages(run_out):
    _, out = run_out
    meta = json.loads((out / "report" / "metadata.json").read_text())
    down = json.loads((out / "report" / "download.json").read_text())
    score = json.loads((out / "report" / "score.json").read_text())
    assert meta["total"]["balanced"] and down["total"]["balanced"] and score["total"]["balanced"]
    assert down["total"]["rows_in"] == meta["total"]["kept"]
    assert score["total"]["rows_in"] == down["total"]["kept"]
    table = SH.read_dataset_table(str(out / "dataset"))
    assert table.num_rows == score["total"]["kept"]
    keys = table.column(S.KEY).to_pylist()
    assert len(keys) == len(set(keys))


def test_policies_and_caption_aware_image_dedup(run_out):
    _, out = run_out
    score = json.loads((out / "report" / "score.json").read_text())
    assert score["sources"]["laion_zh"]["reasons"].get("low_similarity", 0) > 0
    assert "low_similarity" not in score["sources"]["wukong"]["reasons"]  # no threshold there
    table = SH.read_dataset_table(str(out / "dataset"))
    laion = table.filter(pc.equal(table.column(S.SOURCE), "laion_zh"))
    assert min(laion.column(S.SCORE).to_pylist()) >= 0.26
    # COCO keeps several captions of one image (dedup: url_caption); LAION never repeats an image.
    coco = table.filter(pc.equal(table.column(S.SOURCE), "coco_zh"))
    per_image = Counter(coco.column(S.SHA256).to_pylist())
    assert max(per_image.values()) >= 2
    assert all(c.strip() for c in coco.column(S.CAPTION_ORIG).to_pylist())


def test_download_failures_are_recorded_with_their_class(run_out):
    _, out = run_out
    down = json.loads((out / "report" / "download.json").read_text())
    assert down["download"]["by_status"]["failed_to_download"].get("http_4xx") == 1  # the sample's dead link
    assert down["total"]["reasons"].get("download:http_4xx") == 1
    assert sum(down["download"]["by_status"]["failed_to_resize"].values()) == 1  # a text file served as an image
