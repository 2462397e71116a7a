"""The dataset card's YAML, and what stage 3 reads from a plain img2dataset folder (fast, no Beam)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
import yaml
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.core.errors import UsageError
from zhclip.pipeline.demo.synthetic import make_jpeg
from zhclip.pipeline.shards import card, loading
from zhclip.pipeline.shards import downloads as DL
from zhclip.pipeline.shards import format as SH

MANIFEST = {"splits": {"val": {"shards": 1, "samples": 3}, "train": {"shards": 2, "samples": 17}}}


def test_card_front_matter_declares_tars_per_split_and_typed_features():
    import datasets

    text = card.card_text(MANIFEST)
    assert text == card.card_text(MANIFEST)  # a function of the manifest: reruns write the same bytes
    front = yaml.safe_load(text.split("---\n")[1])
    (config,) = front["configs"]
    assert config["data_files"] == [{"split": "train", "path": "train/train-*.tar"},
                                    {"split": "val", "path": "val/val-*.tar"}]
    features = datasets.Features._from_yaml_list(front["dataset_info"]["features"])
    assert features == loading.webdataset_features()
    assert features[S.MEMBER_JSON][S.SCORE].dtype == "float64"
    assert features[S.MEMBER_JSON][S.CAPTION_ORIG].dtype == "string"
    assert features[S.MEMBER_JSON][S.HEIGHT].dtype == "int64"
    # every json member field, and only those: a column added to DATASET_SCHEMA reaches the card
    assert set(features[S.MEMBER_JSON]) == set(SH.JSON_FIELDS)
    assert {s["name"]: s["num_examples"] for s in front["dataset_info"]["splits"]} == {"train": 17, "val": 3}


def test_url_shard_table_copies_the_key_into_zhclip_key():
    table = S.url_shard_table(pa.table({S.KEY: ["laion_zh_1", "wukong_2"], S.SOURCE: ["laion_zh", "wukong"]}))
    assert table.schema.names == S.METADATA_COLUMNS
    assert table.column(S.ZHCLIP_KEY).to_pylist() == ["laion_zh_1", "wukong_2"]


def plain_img2dataset_shard(folder: Path, rows: list[dict], name: str = "00000") -> None:
    """A shard as img2dataset's CLI writes it: positional keys, the saved extra columns."""
    folder.mkdir(parents=True, exist_ok=True)
    columns = sorted({c for extra in rows for c in extra})  # every row has every saved column
    rows = [{c: extra.get(c) for c in columns} for extra in rows]
    records = []
    with wds.TarWriter(str(folder / f"{name}.tar")) as tar:
        for i, extra in enumerate(rows):
            key = f"{name}{i:04d}"
            meta = {S.KEY: key, S.URL: f"http://127.0.0.1/{i}.jpg", S.CAPTION: "一只猫坐在窗台上",
                    S.STATUS: S.STATUS_SUCCESS, S.ERROR_MESSAGE: None, S.WIDTH: 64, S.HEIGHT: 64,
                    **extra}
            records.append(meta)
            tar.write({"__key__": key, "jpg": make_jpeg(i), "txt": meta[S.CAPTION],
                       "json": json.dumps(meta)})
    pq.write_table(pa.Table.from_pylist(records[::-1]), str(folder / f"{name}.parquet"))


def test_plain_img2dataset_shard_gets_zhclip_keys_and_sources_back(tmp_path):
    plain_img2dataset_shard(tmp_path, [
        {S.ZHCLIP_KEY: "laion_zh_7", S.SOURCE: "laion_zh", S.SIMILARITY: 0.31},
        {S.ZHCLIP_KEY: "coco_zh_9", S.SOURCE: "coco_zh", S.CAPTION_ORIG: "a cat"},
    ])
    shards = DL.list_download_shards(str(tmp_path))
    assert DL.check_download_columns(shards, str(tmp_path)) == sorted(
        set(S.I2D_RECOMMENDED_COLUMNS) - {S.ZHCLIP_KEY, S.SOURCE, S.SIMILARITY, S.CAPTION_ORIG})
    by_key = {s.key: s for s in DL.read_download_shard(shards[0]).samples}
    assert sorted(by_key) == ["coco_zh_9", "laion_zh_7"]  # not img2dataset's 000000000
    assert (by_key["laion_zh_7"].source, by_key["laion_zh_7"].similarity) == ("laion_zh", 0.31)
    assert by_key["coco_zh_9"].caption_orig == "a cat" and by_key["coco_zh_9"].image == make_jpeg(1)


def test_without_zhclip_key_the_img2dataset_keys_stay_and_are_reported(tmp_path):
    plain_img2dataset_shard(tmp_path, [{S.SOURCE: "wukong"}])
    shards = DL.list_download_shards(str(tmp_path))
    assert S.ZHCLIP_KEY in DL.check_download_columns(shards, str(tmp_path))
    assert [s.key for s in DL.read_download_shard(shards[0]).samples] == ["000000000"]


def test_missing_source_stops_with_the_columns_named(tmp_path):
    plain_img2dataset_shard(tmp_path, [{S.ZHCLIP_KEY: "wukong_1"}])
    with pytest.raises(UsageError) as info:
        DL.check_download_columns(DL.list_download_shards(str(tmp_path)), str(tmp_path))
    message = str(info.value)
    assert "00000.parquet has no column source" in message
    assert json.dumps(list(S.I2D_RECOMMENDED_COLUMNS)) in message  # the flag value that fixes it


def test_stage2_output_needs_no_extra_columns(tmp_path):
    """zhclip download writes its own keys and error_class: nothing to warn about."""
    plain_img2dataset_shard(tmp_path, [{S.SOURCE: "wukong", S.ERROR_CLASS: None}])
    assert DL.check_download_columns(DL.list_download_shards(str(tmp_path)), str(tmp_path)) == []
