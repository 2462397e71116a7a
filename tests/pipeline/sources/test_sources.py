"""Every source reader on small files in its real format, plus the shared fixtures."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from zhclip.pipeline.core import reasons as RS
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.core.config import SourceConfig
from zhclip.pipeline.sources.common import make_key
from zhclip.pipeline.sources.registry import read_source_file


def _collect(src: SourceConfig, path: str):
    rows, rejects, skipped = [], [], {}
    n_in = 0
    for b in read_source_file(src, path):
        rows.append(b.rows)
        rejects.append(b.rejects)
        for k, v in b.skipped.items():
            skipped[k] = skipped.get(k, 0) + v
        n_in += b.rows_in
    rows_t = pa.concat_tables(rows) if rows else S.empty_metadata_table()
    rej_t = pa.concat_tables(rejects) if rejects else S.empty_reject_table()
    return rows_t, rej_t, skipped, n_in


def test_laion_pushdown_and_columns(tmp_path):
    path = tmp_path / "part-0.parquet"
    table = pa.table({
        "SAMPLE_ID": pa.array([1, 2, 3, 4], pa.int64()),
        "URL": ["http://a.com/1.jpg", "http://a.com/2.jpg", "http://a.com/3.jpg", "http://a.com/4.jpg"],
        "TEXT": ["一只猫在沙发上睡觉", "a dog", "一只狗在草地上奔跑", None],
        "HEIGHT": pa.array([100, 200, 300, 400], pa.int32()),
        "WIDTH": pa.array([10, 20, 30, 40], pa.int32()),
        "LICENSE": ["?", "?", "cc-by", "?"],
        "LANGUAGE": ["zh", "en", "zh", None],
        "NSFW": ["UNLIKELY", "UNLIKELY", "UNSURE", "NSFW"],
        "similarity": [0.3, 0.31, 0.29, 0.4],
        "punsafe": [0.01, 0.02, 0.03, 0.9],
        "pwatermark": [0.1, 0.2, 0.3, 0.4],
        "unused_column": ["x"] * 4,
    })
    pq.write_table(table, path, row_group_size=2)
    src = SourceConfig(name="laion_zh", kind="laion", paths=[str(path)])
    rows, rejects, skipped, n_in = _collect(src, str(path))
    assert rows.column(S.SOURCE_ID).to_pylist() == ["1", "3"]
    assert rows.column(S.KEY).to_pylist() == ["laion_zh_1", "laion_zh_3"]
    assert rows.column(S.SIMILARITY).to_pylist() == [0.3, 0.29]
    assert rows.column(S.PUNSAFE).to_pylist() == [0.01, 0.03]
    assert rows.column(S.NSFW).to_pylist() == ["UNLIKELY", "UNSURE"]
    assert rows.schema == S.METADATA_SCHEMA
    assert skipped == {RS.REASON_NOT_ZH: 2}
    assert n_in == 4


def test_laion_shared_fixture_rows(shared_fixtures):
    path = shared_fixtures / "img2dataset" / "test_1000.parquet"
    src = SourceConfig(name="laion_zh", kind="laion", paths=[str(path)], languages=[])
    rows, rejects, skipped, n_in = _collect(src, str(path))
    assert n_in == 1000 and rows.num_rows == 1000 and rejects.num_rows == 0
    assert rows.column(S.KEY).unique().__len__() == 1000  # keys unique without SAMPLE_ID
    # Without a LANGUAGE column the default zh filter cannot run: a clear file reject.
    src_zh = SourceConfig(name="laion_zh", kind="laion", paths=[str(path)])
    rows, rejects, _, _ = _collect(src_zh, str(path))
    assert rows.num_rows == 0
    assert rejects.column(S.REASON).to_pylist() == [RS.REASON_MALFORMED_FILE]
    assert "languages: []" in rejects.column(S.CAPTION)[0].as_py()


def test_wukong_quotes_newlines_and_broken_lines(tmp_path):
    path = tmp_path / "wukong_100m_7.csv"
    path.write_bytes(
        b"url,caption\n"
        b'http://a.com/1.jpg,"\xe7\xba\xa2\xe8\x89\xb2,\xe7\x9a\x84\xe8\x8a\xb1"\n'
        b'http://a.com/2.jpg,"line one\nline two"\n'
        b"http://a.com/3.jpg,too,many,fields\n"
        b"http://a.com/4.jpg,\xff\xfe bad bytes\n"
        b"http://a.com/5.jpg,\xe4\xb8\x80\xe5\x8f\xaa\xe7\x8c\xab\n"
    )
    src = SourceConfig(name="wukong", kind="wukong", paths=[str(path)])
    rows, rejects, _, n_in = _collect(src, str(path))
    assert n_in == 5
    caps = rows.column(S.CAPTION).to_pylist()
    assert "红色,的花" in caps and "line one\nline two" in caps and "一只猫" in caps
    assert sorted(rejects.column(S.REASON).to_pylist()) == ["invalid_utf8", "malformed_row"]
    assert rows.column(S.KEY).to_pylist()[0] == "wukong_wukong_100m_7-0"


def test_wukong_wrong_header_is_file_reject(tmp_path):
    path = tmp_path / "w.csv"
    path.write_text("link,text\nhttp://a.com/x.jpg,一只猫在睡觉\n")
    src = SourceConfig(name="wukong", kind="wukong", paths=[str(path)])
    rows, rejects, _, _ = _collect(src, str(path))
    assert rows.num_rows == 0
    assert rejects.column(S.REASON).to_pylist() == [RS.REASON_MALFORMED_FILE]


def _coco_file(tmp_path):
    data = {
        "images": [
            {"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "coco_url": "http://images.cocodataset.org/train2014/COCO_train2014_000000000001.jpg", "width": 640, "height": 480},
            {"id": 2, "file_name": "COCO_train2014_000000000002.jpg", "coco_url": "http://images.cocodataset.org/train2014/COCO_train2014_000000000002.jpg", "width": 640, "height": 480},
        ],
        "annotations": [
            {"id": 11, "image_id": 1, "caption": "A cat sleeping on a sofa."},
            {"id": 12, "image_id": 2, "caption": "A dog in the park."},
            {"id": 13, "image_id": 3, "caption": "No such image."},
            {"id": 14, "image_id": 1, "caption": {"bad": 1}},
        ],
    }
    p = tmp_path / "captions_train2014.json"
    p.write_text(json.dumps(data))
    holdout = tmp_path / "test_ids.txt"
    holdout.write_text("# karpathy test\n2\n")
    return p, holdout


def test_coco_captions_holdout_and_image_root(tmp_path):
    p, holdout = _coco_file(tmp_path)
    src = SourceConfig(name="coco_zh", kind="coco", paths=[str(p)], holdout_ids=str(holdout))
    rows, rejects, _, n_in = _collect(src, str(p))
    assert n_in == 4
    assert rows.column(S.SOURCE_ID).to_pylist() == ["11"]
    assert rows.column(S.URL)[0].as_py().startswith("http://images.cocodataset.org/")
    reasons = dict(zip(rejects.column(S.KEY).to_pylist(), rejects.column(S.REASON).to_pylist(), strict=True))
    assert reasons == {"coco_zh_12": "test_split", "coco_zh_13": "malformed_row", "coco_zh_14": "malformed_row"}
    src_local = SourceConfig(name="coco_zh", kind="coco", paths=[str(p)], image_root="/data/coco/train2014")
    rows, _, _, _ = _collect(src_local, str(p))
    assert rows.column(S.URL).to_pylist()[0] == "file:///data/coco/train2014/COCO_train2014_000000000001.jpg"


def test_coco_malformed_json_is_one_file_reject(tmp_path):
    p = tmp_path / "captions_val2014.json"
    p.write_text('{"images": [1, 2,')
    src = SourceConfig(name="coco_zh", kind="coco", paths=[str(p)])
    rows, rejects, _, n_in = _collect(src, str(p))
    assert rows.num_rows == 0 and n_in == 1
    assert rejects.column(S.REASON).to_pylist() == [RS.REASON_MALFORMED_FILE]


def test_coco_cn_shared_fixture(shared_fixtures, tmp_path):
    path = shared_fixtures / "coco-cn" / "coco-cn_ext.icap2020.txt"
    lines = path.read_text(encoding="utf-8").splitlines()
    first_id = int(lines[0].split("#")[0].rsplit("_", 1)[1])
    holdout = tmp_path / "ids.txt"
    holdout.write_text(f"{first_id}\n")
    src = SourceConfig(name="coco_cn", kind="coco", paths=[str(path)], holdout_ids=str(holdout))
    rows, rejects, _, n_in = _collect(src, str(path))
    assert n_in == len([line for line in lines if line.strip()]) == 4712
    held = sum(1 for line in lines if int(line.split("#")[0].rsplit("_", 1)[1]) == first_id)
    assert rejects.num_rows == held and set(rejects.column(S.REASON).to_pylist()) == {"test_split"}
    assert rows.num_rows == 4712 - held
    assert rows.column(S.URL)[0].as_py().startswith("http://images.cocodataset.org/")
    assert len(set(rows.column(S.KEY).to_pylist())) == rows.num_rows


def test_visual_genome_regions_boxes_and_holdout(tmp_path):
    image_data = [
        {"image_id": 1, "url": "https://cs.stanford.edu/people/rak248/VG_100K/1.jpg", "coco_id": None, "width": 800, "height": 600},
        {"image_id": 2, "url": "https://cs.stanford.edu/people/rak248/VG_100K/2.jpg", "coco_id": 42, "width": 800, "height": 600},
    ]
    regions = [
        {"id": 1, "regions": [
            {"region_id": 101, "image_id": 1, "phrase": "a red car", "x": 1, "y": 2, "width": 30, "height": 40},
            {"region_id": 102, "image_id": 1, "phrase": 7, "x": 1, "y": 2, "width": 30, "height": 40},
        ]},
        {"id": 2, "regions": [{"region_id": 201, "image_id": 2, "phrase": "a tree", "x": 0, "y": 0, "width": 5, "height": 5}]},
        {"id": 9, "regions": [{"region_id": 901, "image_id": 9, "phrase": "no image", "x": 0, "y": 0, "width": 5, "height": 5}]},
        "garbage",
    ]
    (tmp_path / "image_data.json").write_text(json.dumps(image_data))
    (tmp_path / "region_descriptions.json").write_text(json.dumps(regions))
    (tmp_path / "ids.txt").write_text("42\n")
    src = SourceConfig(name="vg_zh", kind="visual_genome", paths=[str(tmp_path / "region_descriptions.json")],
                       image_data=str(tmp_path / "image_data.json"), holdout_ids=str(tmp_path / "ids.txt"),
                       mode="regions")
    rows, rejects, _, n_in = _collect(src, src.paths[0])
    assert n_in == 5
    assert rows.column(S.SOURCE_ID).to_pylist() == ["101", "102"]
    assert rows.column(S.CAPTION).to_pylist() == ["a red car", "7"]  # numbers become text
    assert rows.column(S.REGION_W).to_pylist() == [30, 30]
    reasons = dict(zip(rejects.column(S.KEY).to_pylist(), rejects.column(S.REASON).to_pylist(), strict=True))
    assert reasons == {"vg_zh_201": "test_split", "vg_zh_901": "malformed_row", "vg_zh_entry3": "malformed_row"}


@pytest.mark.parametrize("fmt", ["parquet", "csv", "tsv", "jsonl"])
def test_generic_formats_with_mapping(tmp_path, fmt):
    data = {"link": ["http://a.com/1.jpg", "http://a.com/2.jpg"], "text": ["一只猫在沙发上睡觉", "蓝天白云下的草原"],
            "pid": ["p-1", "p.2"], "sim": [0.3, 0.5]}
    path = tmp_path / f"mine.{fmt}"
    if fmt == "parquet":
        pq.write_table(pa.table(data), path)
    elif fmt in ("csv", "tsv"):
        sep = "," if fmt == "csv" else "\t"
        lines = [sep.join(data)] + [sep.join(str(data[c][i]) for c in data) for i in range(2)]
        path.write_text("\n".join(lines) + "\n")
    else:
        path.write_text("\n".join(json.dumps({c: data[c][i] for c in data}) for i in range(2))
                        + "\n{broken json\n[1,2]\n")
    src = SourceConfig(name="mine", kind="generic", paths=[str(path)],
                       columns={"url": "link", "caption": "text", "id": "pid", "similarity": "sim"})
    rows, rejects, _, n_in = _collect(src, str(path))
    assert rows.column(S.CAPTION).to_pylist() == data["text"]
    assert rows.column(S.SIMILARITY).to_pylist() == [0.3, 0.5]
    keys = rows.column(S.KEY).to_pylist()
    assert keys[0] == "mine_p-1" and keys[1].startswith("mine_h") and "." not in keys[1]
    assert n_in == rows.num_rows + rejects.num_rows
    if fmt == "jsonl":
        assert rejects.column(S.REASON).to_pylist() == ["malformed_row", "malformed_row"]


def test_keys_are_webdataset_safe():
    assert make_key("laion_zh", "123") == "laion_zh_123"
    k = make_key("mine", "a/b.c d")
    assert "." not in k and "/" not in k and " " not in k
    assert make_key("mine", "a/b.c d") == k  # reproducible
    assert make_key("mine", "a/b.c e") != k
