"""Hostile and broken source files: each ends in recorded rejects with every row counted.

Each case here crashed stage 1, or lost rows while the report said balanced,
before issue 13: the files are real parquet / CSV / JSON written on disk and
read through the same entry point the Beam job uses.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
import pyarrow.parquet as pq
import pytest
from zhclip.pipeline.core import reasons as RS
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.core.config import SourceConfig, config_from_dict
from zhclip.pipeline.metadata.job import run_metadata
from zhclip.pipeline.sources.common import local_image_url
from zhclip.pipeline.sources.registry import read_source_file

CAPS = ["一只猫在沙发上睡觉", "一只狗在草地上奔跑", "海边的日落很美丽", "山上的雪很厚很白"]


def _collect(src: SourceConfig, path: str):
    rows, rejects, skipped, n_in, unknown = [], [], {}, 0, 0
    for b in read_source_file(src, path):
        rows.append(b.rows)
        rejects.append(b.rejects)
        for k, v in b.skipped.items():
            skipped[k] = skipped.get(k, 0) + v
        n_in += b.rows_in
        unknown += b.unknown
    return (pa.concat_tables(rows) if rows else S.empty_metadata_table(),
            pa.concat_tables(rejects) if rejects else S.empty_reject_table(), skipped, n_in, unknown)


def _laion_table(n: int, **overrides) -> pa.Table:
    cols = {
        "SAMPLE_ID": pa.array(range(n), pa.int64()),
        "URL": [f"http://img{i}.example.com/{i}.jpg" for i in range(n)],
        "TEXT": [CAPS[i % 4] + str(i) for i in range(n)],
        "WIDTH": pa.array([300] * n, pa.int32()),
        "HEIGHT": pa.array([200] * n, pa.int32()),
        "LANGUAGE": ["zh"] * n,
        "similarity": [0.3] * n,
    }
    cols.update(overrides)
    return pa.table(cols)


def _laion(tmp_path) -> SourceConfig:
    return SourceConfig(name="laion_zh", kind="laion", paths=[str(tmp_path / "*.parquet")])


def _reasons(rejects: pa.Table, skipped: dict[str, int]) -> dict[str, int]:
    out = dict(skipped)
    for r in rejects.column(S.REASON).to_pylist():
        out[r] = out.get(r, 0) + 1
    return out


@pytest.mark.parametrize("column,values", [
    ("LANGUAGE", pa.array([1, 2, 3, 4, 5], pa.int64())),
    ("WIDTH", pa.array([[1, 2]] * 5, pa.list_(pa.int64()))),
    ("similarity", pa.array([[0.3]] * 5, pa.list_(pa.float64()))),
])
def test_laion_columns_of_the_wrong_kind_are_malformed_file_with_every_row_counted(tmp_path, column, values):
    path = tmp_path / "bad.parquet"
    pq.write_table(_laion_table(5, **{column: values}), path)
    rows, rejects, skipped, n_in, unknown = _collect(_laion(tmp_path), str(path))
    assert rows.num_rows == 0
    assert _reasons(rejects, skipped) == {RS.REASON_MALFORMED_FILE: 5}
    assert n_in == 5 and unknown == 0
    assert column in rejects.column(S.CAPTION)[0].as_py()  # the reject names the column


def _corrupt_row_group(path, index: int) -> None:
    """Overwrite the page headers of one row group with junk (thrift cannot read them)."""
    meta = pq.ParquetFile(path).metadata.row_group(index)
    data = bytearray(path.read_bytes())
    for c in range(meta.num_columns):
        off = meta.column(c).data_page_offset
        data[off:off + 12] = b"\xff" * 12
    path.write_bytes(bytes(data))


def test_parquet_with_one_corrupt_row_group_keeps_the_good_groups_and_counts_the_rest(tmp_path):
    path = tmp_path / "part.parquet"
    pq.write_table(_laion_table(30), path, row_group_size=10, compression="none")
    _corrupt_row_group(path, 1)
    rows, rejects, skipped, n_in, unknown = _collect(_laion(tmp_path), str(path))
    assert sorted(int(x) for x in rows.column(S.SOURCE_ID).to_pylist()) == [*range(10), *range(20, 30)]
    assert _reasons(rejects, skipped) == {RS.REASON_MALFORMED_FILE: 10}
    assert n_in == 30 and unknown == 0


def test_generic_parquet_corrupt_group_is_exact_too(tmp_path):
    path = tmp_path / "mine.parquet"
    t = pa.table({"url": [f"http://a{i}.example.com/x.jpg" for i in range(20)], "caption": [CAPS[0]] * 20})
    pq.write_table(t, path, row_group_size=5, compression="none")
    _corrupt_row_group(path, 3)
    src = SourceConfig(name="mine", kind="generic", paths=[str(path)])
    rows, rejects, skipped, n_in, _ = _collect(src, str(path))
    assert rows.num_rows == 15 and _reasons(rejects, skipped) == {RS.REASON_MALFORMED_FILE: 5}
    assert n_in == 20


def test_binary_text_decoded_when_utf8_and_struct_text_rejected(tmp_path):
    path = tmp_path / "bin.parquet"
    text = pa.array([CAPS[0].encode(), b"\xff\xfe\x00junk", None, CAPS[1].encode()], pa.binary())
    pq.write_table(_laion_table(4, TEXT=text), path)
    rows, rejects, skipped, n_in, _ = _collect(_laion(tmp_path), str(path))
    assert rows.column(S.CAPTION).to_pylist() == [CAPS[0], None, CAPS[1]]
    assert rejects.column(S.REASON).to_pylist() == [RS.REASON_INVALID_CAPTION]
    assert rejects.column(S.KEY).to_pylist() == ["laion_zh_1"]
    assert n_in == 4

    path.unlink()
    struct = pa.array([{"a": CAPS[0]}, {"a": "x"}, None], pa.struct([("a", pa.string())]))
    pq.write_table(_laion_table(3, TEXT=struct), path)
    rows, rejects, skipped, n_in, _ = _collect(_laion(tmp_path), str(path))
    # A null struct is a missing caption (empty_caption later); the two structs are not captions.
    assert rows.column(S.CAPTION).to_pylist() == [None]
    assert rejects.column(S.REASON).to_pylist() == [RS.REASON_INVALID_CAPTION] * 2
    assert all("{" not in (c or "") for c in rejects.column(S.CAPTION).to_pylist())


def test_generic_parquet_binary_captions(tmp_path):
    path = tmp_path / "mine.parquet"
    pq.write_table(pa.table({"url": ["http://a.example.com/1.jpg", "http://b.example.com/2.jpg"],
                             "caption": pa.array([CAPS[2].encode(), b"\x80\x81"], pa.binary())}), path)
    src = SourceConfig(name="mine", kind="generic", paths=[str(path)])
    rows, rejects, _, _, _ = _collect(src, str(path))
    assert rows.column(S.CAPTION).to_pylist() == [CAPS[2]]
    assert rejects.column(S.REASON).to_pylist() == [RS.REASON_INVALID_CAPTION]


def test_csv_line_over_the_block_limit_keeps_rows_before_and_reports_unknown(tmp_path):
    path = tmp_path / "wukong_100m_0.csv"
    good = "".join(f"http://w{i}.example.com/{i}.jpg,{CAPS[i % 4]}\n" for i in range(50))
    # One caption longer than two 16 MiB parse blocks: pyarrow cannot go past it.
    path.write_text("url,caption\n" + good * 40 + "http://x.example.com/a.jpg," + "x" * (33 << 20)
                    + "\n" + good, encoding="utf-8")
    src = SourceConfig(name="wukong", kind="wukong", paths=[str(path)])
    rows, rejects, skipped, n_in, unknown = _collect(src, str(path))
    assert unknown == 1
    assert rejects.column(S.REASON).to_pylist() == [RS.REASON_MALFORMED_FILE]
    assert n_in == rows.num_rows + 1 and rows.num_rows >= 1
    assert "after" in rejects.column(S.CAPTION)[0].as_py()


def test_json_nested_100k_deep_is_a_reject_not_a_crash(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    coco = tmp_path / "captions.json"
    coco.write_text('{"images": [], "annotations": ' + deep + "}")
    src = SourceConfig(name="coco_zh", kind="coco", paths=[str(coco)])
    _, rejects, _, n_in, _ = _collect(src, str(coco))
    assert rejects.column(S.REASON).to_pylist() == [RS.REASON_MALFORMED_FILE] and n_in == 1

    lines = tmp_path / "mine.jsonl"
    lines.write_text(json.dumps({"url": "http://a.example.com/1.jpg", "caption": CAPS[0]}) + "\n"
                     + '{"url": ' + deep + "}\n")
    src = SourceConfig(name="mine", kind="generic", paths=[str(lines)])
    rows, rejects, _, n_in, _ = _collect(src, str(lines))
    assert rows.num_rows == 1 and rejects.column(S.REASON).to_pylist() == [RS.REASON_MALFORMED_ROW]


def test_image_root_refuses_paths_out_of_the_root(tmp_path):
    assert local_image_url("/data/coco", "train2014/a.jpg") == "file:///data/coco/train2014/a.jpg"
    for name in ["../etc/passwd", "a/../../b.jpg", "/etc/passwd", "a\x00.jpg", "..\\x.jpg", ""]:
        assert local_image_url("/data/coco", name) is None, name
    coco = tmp_path / "captions.json"
    coco.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "../../secret.jpg"}, {"id": 2, "file_name": "ok.jpg"}],
        "annotations": [{"id": 10, "image_id": 1, "caption": "a cat"},
                        {"id": 11, "image_id": 2, "caption": "a dog"}],
    }))
    src = SourceConfig(name="coco_zh", kind="coco", paths=[str(coco)], image_root=str(tmp_path / "img"))
    rows, rejects, _, _, _ = _collect(src, str(coco))
    assert rows.column(S.URL).to_pylist() == [f"file://{tmp_path}/img/ok.jpg"]
    assert rejects.column(S.REASON).to_pylist() == [RS.REASON_INVALID_URL]


def test_job_finishes_balanced_over_every_crashing_file(tmp_path):
    data = tmp_path / "laion"
    data.mkdir()
    pq.write_table(_laion_table(4), data / "good.parquet")
    pq.write_table(_laion_table(3, LANGUAGE=pa.array([1, 2, 3])), data / "lang_ints.parquet")
    pq.write_table(_laion_table(2, WIDTH=pa.array([[1], [2]])), data / "width_lists.parquet")
    pq.write_table(_laion_table(20, SAMPLE_ID=pa.array(range(100, 120))), data / "groups.parquet",
                   row_group_size=10, compression="none")
    _corrupt_row_group(data / "groups.parquet", 0)
    # Three rows under SAMPLE_ID 7 with different URLs (a fourth, good file repeats id 0 too).
    dup_urls = ["http://dup.example.com/c.jpg", "http://dup.example.com/a.jpg", "http://dup.example.com/b.jpg"]
    pq.write_table(_laion_table(3, SAMPLE_ID=pa.array([7, 7, 7]), URL=dup_urls), data / "dup_ids.parquet")
    (tmp_path / "deep.json").write_text('{"annotations": ' + "[" * 100_000 + "]" * 100_000 + "}")
    cfg = config_from_dict({
        "output": str(tmp_path / "out"),
        "sources": [{"name": "laion_zh", "kind": "laion", "paths": [str(data / "*.parquet")]},
                    {"name": "coco_zh", "kind": "coco", "paths": [str(tmp_path / "deep.json")]}],
    })
    report = run_metadata(cfg, [])
    laion = report["sources"]["laion_zh"]
    assert laion["rows_in"] == 4 + 3 + 2 + 20 + 3 and laion["balanced"] is True
    assert laion["reasons"][RS.REASON_MALFORMED_FILE] == 3 + 2 + 10
    assert laion["reasons"][RS.REASON_DUPLICATE_KEY] == 2
    assert laion["kept"] == 4 + 10 + 1
    shards = pa.concat_tables([pq.read_table(f) for f in sorted((tmp_path / "out" / "metadata").glob("*.parquet"))])
    keys = shards.column(S.KEY).to_pylist()
    assert len(keys) == len(set(keys))
    # the winner is the smallest URL, whatever the file order
    assert shards.filter(pa.compute.equal(shards.column(S.KEY), "laion_zh_7")).column(S.URL).to_pylist() \
        == ["http://dup.example.com/a.jpg"]
    assert report["sources"]["coco_zh"]["reasons"] == {RS.REASON_MALFORMED_FILE: 1}
    assert report["total"]["balanced"] is True


def test_file_urls_are_allowed_per_source_not_globally():
    from zhclip.filters.rules import RuleSet, apply_rules
    from zhclip.pipeline.sources.common import rows_table

    laion = rows_table("laion_zh", {S.SOURCE_ID: ["1", "2"], S.URL: ["file:///etc/passwd.jpg",
                                                                     "http://a.example.com/x.jpg"],
                                    S.CAPTION: [CAPS[0], CAPS[1]]})
    coco = rows_table("coco_zh", {S.SOURCE_ID: ["3"], S.URL: ["file:///data/coco/a.jpg"], S.CAPTION: [CAPS[2]]})
    rules = RuleSet(schemes=("http", "https", "file"), file_sources=("coco_zh",))
    kept, rejects = apply_rules(pa.concat_tables([laion, coco]), rules)
    assert sorted(kept.column(S.KEY).to_pylist()) == ["coco_zh_3", "laion_zh_2"]
    assert rejects.column(S.KEY).to_pylist() == ["laion_zh_1"]
    assert rejects.column(S.REASON).to_pylist() == [RS.REASON_INVALID_URL]
