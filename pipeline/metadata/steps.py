"""Stage 1's per-table steps: read, join regions, rules, and the spills and dedups on each side of a shuffle.

Each step is a small DoFn over pyarrow tables; job.build_pipeline strings them
together with Chain so the runner never encodes a table between two steps.
The spills move file names through the shuffles, not rows (see job.py).
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam
import numpy as np
import polars as pl
import pyarrow as pa
from apache_beam.metrics import Metrics
from tqdm import tqdm
from zhclip.filters.dedup import HASH_COLUMN as DEDUP_HASH
from zhclip.filters.dedup import dedup_by_key, dedup_by_url, partition_table, with_dedup_hash
from zhclip.filters.rules import RuleSet, apply_rules
from zhclip.pipeline.core import report as R
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.core.spill import read_groups, spill_folder, with_hash, write_part
from zhclip.pipeline.core.tags import TAG_COUNTS as COUNTS
from zhclip.pipeline.core.tags import TAG_REJECTS as REJECTS
from zhclip.pipeline.core.tags import TAG_SPILLED_REJECTS as SPILLED_REJECTS


class ReadSources(beam.DoFn):
    """(source name, file) -> row tables; rejects and counts as tagged outputs."""

    def __init__(self, cfg: dict[str, Any]):
        self._cfg = cfg

    def setup(self) -> None:
        from zhclip.pipeline.core.config import config_from_dict

        self._sources = {s.name: s for s in config_from_dict(self._cfg).sources}
        self._rows_in = Metrics.counter("zhclip.metadata", "rows_in")

    def process(self, element: tuple[str, str]):
        from zhclip.pipeline.sources.registry import read_source_file

        name, path = element
        src = self._sources[name]
        # Shown on a terminal only (disable=None); Dataflow workers log counters instead.
        bar = tqdm(
            desc=f"stage 1 {name}:{path.rsplit('/', 1)[-1]}",
            unit=" rows",
            unit_scale=True,
            disable=None,
            leave=False,
            mininterval=1.0,
        )
        for b in read_source_file(src, path):
            bar.update(b.rows_in)
            self._rows_in.inc(b.rows_in)
            yield beam.pvalue.TaggedOutput(
                COUNTS, R.counts(name, rows_in=b.rows_in, reasons=b.skipped, unknown=b.unknown)
            )
            if b.rejects.num_rows:
                yield beam.pvalue.TaggedOutput(REJECTS, b.rejects)
            if b.rows.num_rows:
                yield b.rows
        bar.close()


class JoinRegionsFn(beam.DoFn):
    """Visual Genome ``mode: image``: an image's translated region rows -> one pair.

    Runs after translation (each phrase is translated alone) and before the
    rules (which judge the joined caption); merged regions leave as rejects.
    """

    def __init__(self, sources: frozenset[str], max_chars: int):
        self._sources = sources
        self._max_chars = max_chars

    def process(self, table: pa.Table):
        from zhclip.pipeline.sources.visual_genome import join_image_sources

        kept, rejects = join_image_sources(table, self._sources, self._max_chars)
        if rejects.num_rows:
            yield beam.pvalue.TaggedOutput(REJECTS, rejects)
        if kept.num_rows:
            yield kept


class ApplyRulesFn(beam.DoFn):
    """Normalise captions, then URL, length and blacklist rules, per table."""

    def __init__(self, rules: RuleSet):
        self._rules = rules

    def setup(self) -> None:
        _ = self._rules.matcher  # build the automaton once per worker

    def process(self, table: pa.Table):
        kept, rejects = apply_rules(table, self._rules)
        if rejects.num_rows:
            yield beam.pvalue.TaggedOutput(REJECTS, rejects)
        if kept.num_rows:
            yield kept


class SpillByUrl(beam.DoFn):
    """Rows -> (URL bucket, part file): every copy of a URL lands in one bucket."""

    def __init__(self, out: str, n_buckets: int, caption_sources: frozenset[str]):
        self._folder = spill_folder(out, "metadata", "rows")
        self._n = n_buckets
        self._caption_sources = caption_sources

    def process(self, table: pa.Table):
        table, hashes = with_dedup_hash(table, self._caption_sources)
        for bucket, part in partition_table(table, (hashes % np.uint64(self._n)).astype(np.int64)):
            yield bucket, write_part(self._folder, part, f"{bucket:05d}")


class SpillRejects(beam.DoFn):
    """Reject rows -> (key bucket, part file), so each rejects file is written once."""

    def __init__(self, out: str, n_buckets: int):
        self._folder = spill_folder(out, "metadata", "rejects")
        self._n = n_buckets

    def process(self, table: pa.Table):
        keys = table.column(S.KEY).combine_chunks().fill_null("")
        hashes = pl.from_arrow(keys).hash(seed=7).to_numpy()
        table = with_hash(table, hashes)
        for bucket, part in partition_table(table, (hashes % np.uint64(self._n)).astype(np.int64)):
            yield bucket, write_part(self._folder, part, f"{bucket:05d}")


class DedupBucket(beam.DoFn):
    """All rows of one URL bucket -> one row per normalised URL (smallest key wins).

    The bucket comes in hash groups (every copy of a URL in one group), one
    (bucket, kept rows) output per group.
    """

    def __init__(self, caption_sources: frozenset[str], n_buckets: int, group_rows: int):
        self._caption_sources = caption_sources
        self._n, self._group_rows = n_buckets, group_rows

    def process(self, element: tuple[int, list[str]]):
        bucket, part_paths = element
        for group in read_groups(part_paths, self._n, self._group_rows, DEDUP_HASH, drop=False):
            kept, rejects = dedup_by_url(group, self._caption_sources)
            if rejects.num_rows:
                yield beam.pvalue.TaggedOutput(REJECTS, rejects)
            yield bucket, kept


class SpillByKey(beam.DoFn):
    """URL-deduplicated rows -> (key bucket, part file): every row of one key lands in one bucket.

    URL buckets cannot see two rows that share a key but not a URL; this
    second spill can, so keys leave stage 1 unique.
    """

    def __init__(self, out: str, n_buckets: int):
        self._folder = spill_folder(out, "metadata", "keys")
        self._n = n_buckets

    def process(self, element: tuple[int, pa.Table]):
        _, table = element
        if table.num_rows == 0:
            return
        hashes = pl.from_arrow(table.column(S.KEY).combine_chunks()).hash(seed=11).to_numpy()
        table = with_hash(table, hashes)
        for bucket, part in partition_table(table, (hashes % np.uint64(self._n)).astype(np.int64)):
            yield bucket, write_part(self._folder, part, f"{bucket:05d}")


class DedupKeyBucket(beam.DoFn):
    """All rows of one key bucket -> one row per key (``duplicate_key`` for the others).

    Emits (bucket, rows sorted by key, last) once per hash group of the
    bucket; ``last`` tells WriteUrlShards the bucket is complete.
    """

    def __init__(self, n_buckets: int, group_rows: int):
        self._n, self._group_rows = n_buckets, group_rows

    def process(self, element: tuple[int, list[str]]):
        bucket, part_paths = element
        groups = read_groups(part_paths, self._n, self._group_rows)
        group = next(groups, None)
        while group is not None:
            kept, rejects = dedup_by_key(group)
            if rejects.num_rows:
                yield beam.pvalue.TaggedOutput(REJECTS, rejects)
            following = next(groups, None)
            yield bucket, kept.sort_by([(S.KEY, "ascending")]), following is None
            group = following


class Chain(beam.DoFn):
    """Run several steps (DoFns) back to back inside one DoFn.

    Each step stays a small named DoFn, but the runner sees one: the
    DirectRunner pickled every Arrow table passed between separate steps
    (about 670 MB per 1M rows, a fifth of stage 1's time). Main outputs feed
    the next step; ``rejects`` tables from any step are spilled by key bucket
    and leave as SPILLED_REJECTS pairs; other tagged outputs pass through.
    """

    def __init__(self, steps: list[beam.DoFn], spill_rejects: beam.DoFn):
        self._steps = steps
        self._spill_rejects = spill_rejects

    def setup(self) -> None:
        for step in [*self._steps, self._spill_rejects]:
            step.setup()

    def start_bundle(self) -> None:
        for step in [*self._steps, self._spill_rejects]:
            step.start_bundle()

    def teardown(self) -> None:
        for step in [*self._steps, self._spill_rejects]:
            step.teardown()

    def process(self, element):
        yield from self._run(0, element)

    def _run(self, index: int, value):
        for out in self._steps[index].process(value):
            if isinstance(out, beam.pvalue.TaggedOutput):
                if out.tag == REJECTS:
                    for pair in self._spill_rejects.process(out.value):
                        yield beam.pvalue.TaggedOutput(SPILLED_REJECTS, pair)
                else:
                    yield out
            elif index + 1 < len(self._steps):
                yield from self._run(index + 1, out)
            else:
                yield out
