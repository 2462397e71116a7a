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
from zhclip.filters.urls import url_dedup_keys
from zhclip.pipeline.core import reasons as RS
from zhclip.pipeline.core import schema as S

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


HASH_COLUMN = "__dhash"


def dedup_hashes(table: pa.Table, caption_sources: frozenset[str] = frozenset()) -> np.ndarray:
    """64-bit hash of every row's dedup key (fixed seed: stable across runs)."""
    keys = dedup_keys(table, caption_sources)
    return pl.from_arrow(keys).hash(seed=_HASH_SEED).to_numpy()


def with_dedup_hash(table: pa.Table, caption_sources: frozenset[str] = frozenset()) -> tuple[pa.Table, np.ndarray]:
    """Attach the dedup hash as a column, so the dedup step need not recompute keys."""
    h = dedup_hashes(table, caption_sources)
    return table.append_column(HASH_COLUMN, pa.array(h)), h


def partition_table(table: pa.Table, buckets: np.ndarray) -> list[tuple[int, pa.Table]]:
    """Split ``table`` into (bucket, rows) parts, one per bucket present."""
    if table.num_rows == 0:
        return []
    order = np.argsort(buckets, kind="stable")
    sorted_buckets = buckets[order]
    starts = np.flatnonzero(np.r_[True, sorted_buckets[1:] != sorted_buckets[:-1]])
    ends = np.r_[starts[1:], len(order)]
    # One take per part (not slices of one big take): a pickled slice carries
    # its parent's whole buffers, which multiplied the shuffle's bytes.
    return [
        (int(sorted_buckets[s]), table.take(pa.array(order[s:e])))
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
    table = table.combine_chunks()
    if HASH_COLUMN in table.column_names:
        dhash = table.column(HASH_COLUMN).to_numpy()
        table = table.drop_columns([HASH_COLUMN])
    else:
        dhash = dedup_hashes(table, caption_sources)
    # Rows whose hash occurs once are unique: only rows sharing a hash (the
    # duplicates, plus any 64-bit collision) need their keys compared.
    shared = pl.Series(dhash).is_duplicated().to_numpy()
    shared_idx = np.flatnonzero(shared)
    keep = ~shared
    if len(shared_idx):
        sub = table.take(pa.array(shared_idx))
        narrow = pa.table({"d": dedup_keys(sub, caption_sources), "k": sub.column(S.KEY)})
        order = pc.sort_indices(narrow, sort_keys=[("d", "ascending"), ("k", "ascending")]).to_numpy()
        d_sorted = narrow.column("d").take(pa.array(order)).combine_chunks()
        first = np.ones(len(order), dtype=bool)
        if len(order) > 1:
            same = pc.fill_null(pc.equal(d_sorted.slice(1), d_sorted.slice(0, len(order) - 1)), False)
            first[1:] = ~same.to_numpy(zero_copy_only=False)
        keep[shared_idx[order[first]]] = True
    winners = pa.array(np.flatnonzero(keep))
    winners = winners.take(pc.sort_indices(table.column(S.KEY).take(winners)))
    kept = table.take(winners)
    losers = table.take(pa.array(np.flatnonzero(~keep)))
    rejects = pa.Table.from_arrays(
        [
            losers.column(S.KEY),
            losers.column(S.SOURCE),
            losers.column(S.URL),
            losers.column(S.CAPTION),
            pa.array([RS.REASON_DUPLICATE_URL] * losers.num_rows, pa.string()),
            pa.array(["metadata"] * losers.num_rows, pa.string()),
            pa.nulls(losers.num_rows, pa.string()),
        ],
        schema=S.REJECT_SCHEMA,
    )
    return kept, rejects


def dedup_by_key(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Keep one row per key (the smallest URL, then caption); the others are ``duplicate_key``.

    Keys are source + source id, and a source may repeat an id (two LAION
    rows with one SAMPLE_ID and different URLs): every later stage joins on
    the key, so two rows under one key would collide there. The winner
    depends only on the rows, not their order, so reruns agree.
    """
    if table.num_rows == 0:
        return table, S.empty_reject_table()
    table = table.combine_chunks()
    keys = table.column(S.KEY)
    shared = pl.Series(keys).is_duplicated().to_numpy()
    if not shared.any():
        return table, S.empty_reject_table()
    keep = ~shared
    idx = np.flatnonzero(shared)
    sub = table.take(pa.array(idx)).select([S.KEY, S.URL, S.CAPTION])
    order = pc.sort_indices(sub, sort_keys=[(S.KEY, "ascending"), (S.URL, "ascending"),
                                            (S.CAPTION, "ascending")]).to_numpy()
    k_sorted = sub.column(S.KEY).take(pa.array(order)).combine_chunks()
    first = np.ones(len(order), dtype=bool)
    first[1:] = ~pc.fill_null(pc.equal(k_sorted.slice(1), k_sorted.slice(0, len(order) - 1)),
                              False).to_numpy(zero_copy_only=False)
    keep[idx[order[first]]] = True
    kept = table.filter(pa.array(keep))
    losers = table.filter(pa.array(~keep))
    rejects = RS.reject_table(losers.column(S.KEY), losers.column(S.SOURCE), losers.column(S.URL),
                              losers.column(S.CAPTION), [RS.REASON_DUPLICATE_KEY] * losers.num_rows,
                              stage="metadata")
    return kept, rejects
