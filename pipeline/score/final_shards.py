"""Stage 3's last move: kept samples -> their global positions -> final webdataset shards.

Image bytes leave the records right after scoring (one spill file per download shard), so
the key join and the shard grouping shuffle metadata only; :class:`WriteShard` reads the
pixels back when it writes. Every sample's position comes from a hash of its key, bucketed
by the hash's first hex digits, so shard contents depend on neither worker count nor timing.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import pyarrow as pa
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.core.memory import release_free_memory
from zhclip.pipeline.core.spill import read_part, write_part
from zhclip.pipeline.core.tags import TAG_COUNTS
from zhclip.pipeline.score import embeddings as E
from zhclip.pipeline.score.steps import IMAGE
from zhclip.pipeline.shards import format as SH
from zhclip.pipeline.shards import writer as SW

# Final-position buckets: the first hex digits of SH.order_key. Bucket order is
# global order, so a bucket's rank offset is the size of the buckets before it.
ORDER_BUCKET_HEX = 3

SPILL_PATH = "spill"
SPILL_ROW = "spill_row"
# WriteShard's tagged output: one embeddings manifest entry per final shard.
TAG_EMBEDDINGS = "embeddings"


def spill_images(records: list[dict[str, Any]], folder: str) -> Iterator[dict[str, Any]]:
    """Move a shard's kept image bytes (and embeddings, when kept) to one spill file;
    records keep (path, row).

    The records then cross the key join and the shard grouping without their
    pixels, which cut the bytes Beam copies through its shuffles to metadata.
    """
    if not records:
        return
    columns = [c for c in (IMAGE, E.IMG_EMB, E.TEXT_EMB) if c in records[0]]
    path = write_part(folder, pa.table({
        c: pa.array([r.pop(c) for r in records], pa.binary()) for c in columns}))
    for row, rec in enumerate(records):
        rec[SPILL_PATH], rec[SPILL_ROW] = path, row
        yield rec


def load_spilled(records: list[dict[str, Any]], column: str) -> list[bytes]:
    """``column`` (image bytes, an embedding) of ``records``, in order, from their spill
    files, one read per file."""
    by_path: dict[str, list[int]] = defaultdict(list)
    for i, rec in enumerate(records):
        by_path[rec[SPILL_PATH]].append(i)
    out: list[bytes] = [b""] * len(records)
    for path, idx in by_path.items():
        values = read_part(path).column(column)
        for i in idx:
            out[i] = values[records[i][SPILL_ROW]].as_py()
    return out


def bucket_of(entry: dict[str, Any]) -> tuple[tuple[str, str], str]:
    order = SH.order_key(entry[S.KEY])
    return (entry[S.SPLIT], order[:ORDER_BUCKET_HEX]), entry[S.KEY]


def sorted_bucket(element: tuple[tuple[str, str], list[str]]) -> tuple[tuple[str, str], list[str]]:
    bucket, keys = element
    return bucket, sorted(keys, key=lambda k: (SH.order_key(k), k))


def assign_positions(element: tuple[tuple[str, str], list[str]], sizes: dict[tuple[str, str], int],
                      samples_per_shard: int) -> Iterator[tuple[str, tuple[str, int, int]]]:
    """(key, (split, shard index, global rank)) for every key of one bucket."""
    (split, bucket), keys = element
    offset = sum(n for (sp, b), n in sizes.items() if sp == split and b < bucket)
    for i, key in enumerate(keys):
        rank = offset + i
        yield key, (split, rank // samples_per_shard, rank)


def join_position(element: tuple[str, dict[str, list[Any]]]) -> Iterator[Any]:
    _, joined = element
    positions, records = list(joined["pos"]), list(joined["rec"])
    # No position: a duplicate-image loser, already rejected by the dedup step.
    if positions:
        split, index, rank = positions[0]
        yield (split, index), (rank, records[0])


class WriteShard(beam.DoFn):
    """All samples of one final shard -> tar + parquet (and its embedding files, when kept);
    yields ShardInfo json, kept counts and the embedding files' manifest entry."""

    def __init__(self, folder: str, embeddings: str | None = None,
                 samples_per_shard: int = 0) -> None:
        self._folder = folder
        self._embeddings = embeddings
        self._sps = samples_per_shard

    def process(self, element: tuple[tuple[str, int], list[tuple[int, dict[str, Any]]]],
                sizes: dict[tuple[str, str], int] | None = None):
        """``sizes``: the final-position bucket sizes, which number the embedding files."""
        (split, index), ranked = element
        ranked = sorted(ranked, key=lambda x: x[0])
        records = [rec for _, rec in ranked]
        samples = []
        kept: Counter = Counter()
        for rec, image in zip(records, load_spilled(records, IMAGE), strict=True):
            meta = {c: rec.get(c) for c in S.DATASET_COLUMNS}
            samples.append(SH.ShardSample(rec[S.KEY], image, rec[S.CAPTION], meta))
            kept[rec[S.SOURCE]] += 1
        info = SW.write_shard(self._folder, split, index, samples)
        del samples
        release_free_memory()  # a final shard's images (~100 MB at 5,000 samples) are written
        yield info.to_json()
        yield beam.pvalue.TaggedOutput(TAG_COUNTS, {
            src: {"rows_in": 0, "kept": n, "reasons": {}} for src, n in kept.items()
        })
        if self._embeddings is not None:
            number = E.shard_number(split, index, sizes or {}, self._sps)
            yield beam.pvalue.TaggedOutput(TAG_EMBEDDINGS, E.write_shard_embeddings(
                self._embeddings, number, f"{split}/{SH.shard_stem(split, index)}", records,
                load_spilled(records, E.IMG_EMB), load_spilled(records, E.TEXT_EMB)))
