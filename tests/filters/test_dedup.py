"""URL dedup over Arrow tables (pure functions, no Beam)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st
from zhclip.filters.dedup import dedup_by_url, partition_table, with_dedup_hash
from zhclip.pipeline.core import reasons as RS
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.sources.common import rows_table


def _table(rows):
    ids, urls, caps, srcs = zip(*rows, strict=True)
    t = rows_table("a", {S.SOURCE_ID: list(ids), S.URL: list(urls), S.CAPTION: list(caps)})
    return t.set_column(t.schema.get_field_index(S.SOURCE), S.SOURCE, pa.array(list(srcs)))


def test_smallest_key_wins_and_spellings_merge():
    t = _table([("2", "http://A.com/x.jpg", "一", "a"), ("1", "http://a.com:80/x.jpg#f", "二", "a"),
                ("3", "http://a.com/y.jpg", "三", "a")])
    kept, rejects = dedup_by_url(t)
    assert kept.column(S.KEY).to_pylist() == ["a_1", "a_3"]
    assert rejects.column(S.KEY).to_pylist() == ["a_2"]
    assert rejects.column(S.REASON).to_pylist() == [RS.REASON_DUPLICATE_URL]


def test_url_caption_sources_keep_distinct_captions():
    t = _table([("1", "http://a.com/x.jpg", "红色的圆", "coco"), ("2", "http://a.com/x.jpg", "蓝色的方块", "coco"),
                ("3", "http://a.com/x.jpg", "红色的圆", "coco")])
    kept, rejects = dedup_by_url(t, frozenset({"coco"}))
    assert kept.column(S.KEY).to_pylist() == ["a_1", "a_2"]
    assert rejects.column(S.KEY).to_pylist() == ["a_3"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 8)), min_size=1, max_size=60, unique_by=lambda x: x[0]))
def test_partitioned_dedup_equals_whole_table_dedup(rows):
    """Splitting by bucket first (as the Beam job does) changes nothing."""
    t = _table([(str(i), f"http://h{u}.com/p.jpg", "描述文字", "a") for i, u in rows])
    whole, _ = dedup_by_url(t)
    hashed, h = with_dedup_hash(t)
    parts = partition_table(hashed, (h % np.uint64(4)).astype(np.int64))
    kept = sorted(k for _, part in parts for k in dedup_by_url(part)[0].column(S.KEY).to_pylist())
    assert kept == sorted(whole.column(S.KEY).to_pylist())
    assert sum(p.num_rows for _, p in parts) == t.num_rows
