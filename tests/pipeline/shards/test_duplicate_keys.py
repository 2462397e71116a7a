"""One key, several samples: stage 3 rejects every copy and `shards verify` reports it.

Before issue 13 two samples written back to back under one key were merged
into one (the second's members overwrote the first's), so stage 3 kept one
without a reject and verify said OK; a json member holding a list crashed
`zhclip score`.
"""

from __future__ import annotations

import json
from pathlib import Path

import webdataset as wds
from zhclip.pipeline.core import reasons as RS
from zhclip.pipeline.core.config import config_from_dict
from zhclip.pipeline.demo.synthetic import Row, make_jpeg, write_download_shard
from zhclip.pipeline.score.job import run_score
from zhclip.pipeline.shards import format as SH
from zhclip.pipeline.shards.format import group_tar_members
from zhclip.pipeline.shards.reader import open_folder
from zhclip.pipeline.shards.verify import DUPLICATE_KEY, verify_folder


def _downloads(folder: Path) -> None:
    rows = [Row("wukong_a"), Row("wukong_dup", caption="一只猫坐在窗台上晒太阳"),
            Row("wukong_dup", caption="一条狗在草地上奔跑跳跃"), Row("wukong_b")]
    write_download_shard(folder, "00000", rows, seed=3)
    # A tar-only sample whose json member is a list, not an object.
    with wds.TarWriter(str(folder / "00001.tar")) as tar:
        tar.write({"__key__": "wukong_list", "jpg": make_jpeg(5), "txt": "一只鸟站在树枝上唱歌",
                   "json": json.dumps([1, 2, 3])})
    write_download_shard(folder / "tmp", "x", [Row("wukong_c")])
    (folder / "tmp" / "x.parquet").rename(folder / "00001.parquet")


def test_back_to_back_samples_under_one_key_stay_two(tmp_path):
    _downloads(tmp_path)
    with (tmp_path / "00000.tar").open("rb") as f:
        stems = [stem for stem, _, _ in group_tar_members(f)]
    assert stems.count("wukong_dup") == 2


def test_score_rejects_every_copy_of_a_duplicate_key_and_survives_a_list_json(tmp_path):
    _downloads(tmp_path / "downloads")
    cfg = config_from_dict({"output": str(tmp_path), "score": {"backend": "precomputed"},
                            "shards": {"samples_per_shard": 10, "val_fraction": 0.0}})
    report = run_score(cfg, [])
    assert report["total"]["balanced"] is True
    assert report["total"]["reasons"][RS.REASON_DUPLICATE_KEY] == 2
    # wukong_c: a row without pixels; wukong_list: pixels whose json is a list (no metadata)
    assert report["total"]["reasons"][RS.REASON_MISSING_MEMBER] == 2
    kept = set(SH.read_dataset_table(str(tmp_path / "dataset")).column("key").to_pylist())
    assert kept == {"wukong_a", "wukong_b"}


def test_verify_reports_a_duplicate_key_in_a_download_folder(tmp_path):
    _downloads(tmp_path)
    result = verify_folder(open_folder(str(tmp_path)), decode=False)
    assert not result.ok
    dups = [p for p in result.problems if p.kind == DUPLICATE_KEY]
    assert dups and "wukong_dup" in dups[0].where
