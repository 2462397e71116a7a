"""Held-out COCO ids in every format users have; an unreadable line stops the job."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from zhclip.pipeline.core.config import config_from_dict
from zhclip.pipeline.core.errors import ConfigError
from zhclip.pipeline.metadata.job import plan_inputs
from zhclip.pipeline.sources.holdout import load_holdout_ids, parse_holdout_line


@pytest.mark.parametrize(("line", "expected"), [
    ("391895", 391895),
    ("  391895  ", 391895),
    ("391897 # 2014", 391897),  # an inline comment, not the id
    ("COCO_val2014_000000391895.jpg", 391895),
    ("val2014/COCO_val2014_000000391895.jpg", 391895),
    ("COCO_train2014_000000000009.JPG", 9),
    ("COCO_val2014_000000391895", 391895),
    ("000000391895.jpg", 391895),
    ("COCO_val2014_000000391896#0", 391896),  # caption number, not the id
    ("COCO_val2014_000000391896#12\t一只猫坐在窗台上", 391896),
    ("COCO_val2014_000000391896\t一只猫", 391896),
    ("", None),
    ("# Karpathy test split", None),
])
def test_each_line_format(line, expected):
    assert parse_holdout_line(line) == expected


@pytest.mark.parametrize("line", [
    "image 391895", "COCO_val2014_391895.jpg", "391895,391896", "abc", "COCO_val2014_000000391896#x",
    "#391895 trailing",
])
def test_lines_that_are_no_format_are_refused(line):
    if line.startswith("#"):
        assert parse_holdout_line(line) is None  # a comment line, whatever it holds
        return
    with pytest.raises(ValueError, match="no COCO image id"):
        parse_holdout_line(line)


def test_bad_line_names_file_and_line(tmp_path):
    f = tmp_path / "ids.txt"
    f.write_text("# test ids\n391895\nCOCO_val2014_000000391896#0\n\nimage 42\n")
    with pytest.raises(ConfigError, match=re.escape(f"{f}:5: no COCO image id in 'image 42'")):
        load_holdout_ids(str(f))


def test_mixed_file(tmp_path):
    f = tmp_path / "ids.txt"
    f.write_text("391895\n391897 # 2014\nCOCO_val2014_000000391896#0\tcap\n"
                 "COCO_val2014_000000000042.jpg\n")
    assert load_holdout_ids(str(f)) == {391895, 391896, 391897, 42}
    assert load_holdout_ids(None) == frozenset()


def _karpathy(images: list[dict]) -> str:
    return json.dumps({"images": images, "dataset": "coco"})


def test_karpathy_split_json_keeps_test_images(tmp_path):
    f = tmp_path / "dataset_coco.json"
    f.write_text(_karpathy([
        {"filepath": "val2014", "filename": "COCO_val2014_000000391895.jpg", "cocoid": 391895,
         "split": "test", "sentences": []},
        {"filepath": "val2014", "cocoid": 522418, "split": "val"},
        {"filepath": "val2014", "cocoid": 184613, "split": "restval"},
        {"filepath": "train2014", "cocoid": 9, "split": "train"},
        {"filepath": "val2014", "cocoid": 60623, "split": "test"},
    ]))
    assert load_holdout_ids(str(f)) == {391895, 60623}


@pytest.mark.parametrize(("content", "match"), [
    ('{"images": [{"cocoid": 1, "split": "test"}, {"imgid": 2, "split": "test"}]}', r"images\[1\]"),
    ('{"annotations": []}', "Karpathy split file"),
    ('{"images": [{"cocoid": 1, "split": "train"}]}', "no image has split 'test'"),
    ("{not json", "not valid JSON"),
])
def test_bad_karpathy_file_is_a_config_error(tmp_path, content, match):
    f = tmp_path / "split.json"
    f.write_text(content)
    with pytest.raises(ConfigError, match=match):
        load_holdout_ids(str(f))


def test_real_coco_cn_caption_file(shared_fixtures):
    """COCO-CN's own file: every line is `COCO_<split>2014_<12 digits>#n<TAB>caption`."""
    f = shared_fixtures / "coco-cn" / "coco-cn_ext.icap2020.txt"
    ids = load_holdout_ids(str(f))
    lines = f.read_text(encoding="utf-8").splitlines()
    expected = {int(re.match(r"COCO_\w+2014_(\d{12})#", ln).group(1)) for ln in lines}
    assert ids == expected and len(ids) == 4573  # the fixture README's image count
    assert 0 not in ids and min(ids) > 0


def test_metadata_job_stops_on_a_bad_holdout_line_before_reading(tmp_path: Path):
    data = tmp_path / "captions_val2014.json"
    data.write_text(json.dumps({"images": [], "annotations": []}))
    holdout = tmp_path / "ids.txt"
    holdout.write_text("391895\n391895 391896\n")
    cfg = config_from_dict({"output": str(tmp_path / "out"), "sources": [
        {"name": "coco_zh", "kind": "coco", "paths": [str(data)], "holdout_ids": str(holdout)}]})
    with pytest.raises(ConfigError, match=f"{re.escape(str(holdout))}:2:"):
        plan_inputs(cfg)


def test_a_list_of_files_is_their_union(tmp_path):
    karpathy = tmp_path / "dataset_coco.json"
    karpathy.write_text(_karpathy([{"cocoid": 1, "split": "test"}, {"cocoid": 2, "split": "val"}]))
    coco_cn = tmp_path / "coco-cn_test.txt"
    coco_cn.write_text("COCO_val2014_000000000003\n")
    (tmp_path / "c.yaml").write_text(
        "sources:\n  - {name: coco_zh, kind: coco, paths: [x.json],\n"
        "     holdout_ids: [dataset_coco.json, coco-cn_test.txt]}\n")
    from zhclip.pipeline.core.config import load_config

    src = load_config(tmp_path / "c.yaml").sources[0]
    assert src.holdout_ids == [str(karpathy), str(coco_cn)]  # relative to the config file
    assert load_holdout_ids(src.holdout_ids) == {1, 3}
