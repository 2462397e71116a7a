"""dedup_by_key: one row per key, the same winner whatever the row order."""

from __future__ import annotations

import random

import pyarrow as pa
from zhclip.filters.dedup import dedup_by_key
from zhclip.pipeline.core import reasons as RS
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.sources.common import rows_table


def test_one_row_per_key_smallest_url_wins_in_any_order():
    rows = [("7", "http://c.example.com/x.jpg"), ("7", "http://a.example.com/x.jpg"),
            ("8", "http://z.example.com/x.jpg"), ("7", "http://b.example.com/x.jpg")]
    winners = set()
    for seed in range(5):
        shuffled = rows[:]
        random.Random(seed).shuffle(shuffled)
        table = rows_table("laion_zh", {S.SOURCE_ID: [r[0] for r in shuffled], S.URL: [r[1] for r in shuffled],
                                        S.CAPTION: ["一只猫在沙发上睡觉"] * 4})
        kept, rejects = dedup_by_key(table)
        assert sorted(kept.column(S.KEY).to_pylist()) == ["laion_zh_7", "laion_zh_8"]
        assert rejects.column(S.REASON).to_pylist() == [RS.REASON_DUPLICATE_KEY] * 2
        assert kept.num_rows + rejects.num_rows == 4
        winners.add(tuple(sorted(kept.column(S.URL).to_pylist())))
    assert winners == {("http://a.example.com/x.jpg", "http://z.example.com/x.jpg")}


def test_unique_keys_pass_untouched():
    table = rows_table("w", {S.SOURCE_ID: ["1", "2"], S.URL: ["http://a.example.com/1", "http://a.example.com/2"],
                             S.CAPTION: ["x", "y"]})
    kept, rejects = dedup_by_key(table)
    assert kept.equals(table.combine_chunks()) and rejects.num_rows == 0
    assert dedup_by_key(table.slice(0, 0))[0].num_rows == 0
    assert isinstance(kept, pa.Table)
