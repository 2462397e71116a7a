"""Cross-source URL dedup over Arrow tables.

Rows are hash-partitioned by their normalised URL so that every copy of a URL
lands in the same bucket; each bucket is then deduplicated with one sort. The
winner is the smallest key, so the result is the same whatever the runner,
worker count or arrival order.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from filters.urls import url_dedup_keys
from pipeline import schema as S

_HASH_SEED = 20221102  # fixed: bucket layout must not change between runs


def dedup_keys(table: pa.Table, caption_sources: frozenset[str] = frozenset()) -> pa.Array:
    """Normalised URL per row; for ``caption_sources`` also the caption.

    COCO and Visual Genome hold several captions (or regions) per image URL,
    and those are distinct pairs, not duplicates: such sources set
    ``dedup: url_caption`` and only identical (URL, caption) pairs merge.
    """
    keys = url_dedup_keys(table.column(S.URL))
    if not caption_sources:
        return keys
    with_caption = pc.binary_join_element_wise(keys, pc.fill_null(table.column(S.CAPTION), ""), "\x1f")
    in_sources = pc.is_in(table.column(S.SOURCE), value_set=pa.array(sorted(caption_sources), pa.string()))
    return pc.if_else(in_sources, with_caption, keys)


def url_buckets(table: pa.Table, n_buckets: int, caption_sources: frozenset[str] = frozenset()) -> np.ndarray:
    """Bucket number of every row, from its dedup key."""
    keys = dedup_keys(table, caption_sources)
    hashes = pl.from_arrow(keys).hash(seed=_HASH_SEED).to_numpy()
    return (hashes % np.uint64(n_buckets)).astype(np.int64)


def partition_table(table: pa.Table, buckets: np.ndarray) -> list[tuple[int, pa.Table]]:
    """Split ``table`` into (bucket, rows) parts, one per bucket present."""
    if table.num_rows == 0:
        return []
    order = np.argsort(buckets, kind="stable")
    sorted_buckets = buckets[order]
    taken = table.take(pa.array(order))
    starts = np.flatnonzero(np.r_[True, sorted_buckets[1:] != sorted_buckets[:-1]])
    ends = np.r_[starts[1:], len(order)]
    return [
        (int(sorted_buckets[s]), taken.slice(int(s), int(e - s)))
        for s, e in zip(starts, ends, strict=True)
    ]


def dedup_by_url(
    table: pa.Table, caption_sources: frozenset[str] = frozenset()
) -> tuple[pa.Table, pa.Table]:
    """Keep one row per normalised URL (smallest key); return (kept, rejects).

    Kept rows come back sorted by key, which makes the shards written from
    them deterministic too.
    """
    if table.num_rows == 0:
        return table, S.empty_reject_table()
    dkey = dedup_keys(table, caption_sources)
    work = table.append_column("__dkey", dkey)
    work = work.sort_by([("__dkey", "ascending"), (S.KEY, "ascending")])
    dk = work.column("__dkey").combine_chunks()
    n = work.num_rows
    first = np.ones(n, dtype=bool)
    if n > 1:
        same = pc.fill_null(pc.equal(dk.slice(1), dk.slice(0, n - 1)), False).to_numpy(
            zero_copy_only=False
        )
        first[1:] = ~same
    mask = pa.array(first)
    kept = work.filter(mask).drop_columns(["__dkey"]).sort_by([(S.KEY, "ascending")])
    losers = work.filter(pc.invert(mask))
    rejects = pa.Table.from_arrays(
        [
            losers.column(S.KEY),
            losers.column(S.SOURCE),
            losers.column(S.URL),
            losers.column(S.CAPTION),
            pa.array([S.REASON_DUPLICATE_URL] * losers.num_rows, pa.string()),
            pa.array(["metadata"] * losers.num_rows, pa.string()),
        ],
        schema=S.REJECT_SCHEMA,
    )
    return kept, rejects
