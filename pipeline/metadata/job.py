"""Stage 1 (`zhclip metadata`): sources -> normalise -> rules -> URL dedup -> URL shards.

Work moves as pyarrow tables, not rows: Beam pays per element, and the rules
are vectorised. The job reads like its description::

    files | ReadSources | TranslateCaptions | JoinRegions | ApplyRules | SpillByUrl
          -> GroupBucket | DedupBucket | WriteUrlShards

with every reject flowing to WriteRejects and every count to WriteReport. The
steps on each side of the shuffle run chained inside one DoFn (see Chain), so
no table is ever encoded by the runner.
The two shuffles (URL buckets for dedup, key buckets for rejects) move file
names, not rows: each table is split by bucket into Arrow IPC part files under
OUT/_tmp/metadata, and a bucket's step reads its parts back. Beam's DirectRunner
holds a shuffle's whole input in memory, so moving rows through it made peak
memory grow with the input. A bucket is read back in hash groups of at most
``metadata.group_rows`` rows (spill.read_groups), so memory stays at about one
group however large the buckets grow: the bucket count is parallelism only.
Outputs under OUT: metadata/{bucket:05d}-{part:04d}.parquet (URL shards that
img2dataset's Downloader reads), rejects/metadata-{bucket:05d}.parquet and
report/metadata.json.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import apache_beam as beam
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions
from tqdm import tqdm
from zhclip.filters.dedup import HASH_COLUMN as DEDUP_HASH
from zhclip.filters.dedup import dedup_by_key, dedup_by_url, partition_table, with_dedup_hash
from zhclip.filters.rules import RuleSet, apply_rules
from zhclip.pipeline.core import paths, stage_marker
from zhclip.pipeline.core import report as R
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.core.cliargs import add_common_arguments, apply_common_arguments
from zhclip.pipeline.core.config import Config, config_from_args, config_to_dict
from zhclip.pipeline.core.spill import (
    read_groups,
    remove_spill,
    spill_folder,
    with_hash,
    write_part,
)
from zhclip.pipeline.core.tags import TAG_COUNTS as COUNTS
from zhclip.pipeline.core.tags import TAG_REJECTS as REJECTS
from zhclip.pipeline.core.tags import TAG_SPILLED_REJECTS as SPILLED_REJECTS
from zhclip.pipeline.sources.holdout import load_holdout_ids

METADATA_DIR = "metadata"
REJECTS_DIR = "rejects"
REPORT_DIR = "report"



# --------------------------------------------------------------------- driver
def plan_inputs(cfg: Config) -> list[tuple[str, str]]:
    """Expand every source's globs into (source name, file) pairs.

    Runs on the driver before the pipeline is built: a missing input, holdout
    list, image_data file, translation table or blacklist file fails here,
    before any work starts.
    """
    if not cfg.sources:
        raise FileNotFoundError("the config lists no sources (add a `sources:` section)")
    files: list[tuple[str, str]] = []
    for src in cfg.sources:
        seen: set[str] = set()
        for path in paths.expand_paths(src.paths):
            if path not in seen:  # overlapping globs must not read a file twice
                seen.add(path)
                files.append((src.name, path))
        holdouts = src.holdout_ids if isinstance(src.holdout_ids, list) else [src.holdout_ids]
        for label, p in [*(("holdout_ids", h) for h in holdouts), ("image_data", src.image_data)]:
            if p and not paths.exists(p):
                raise FileNotFoundError(f"source {src.name}: {label} file not found: {p}")
        load_holdout_ids(src.holdout_ids)  # an unreadable line stops the job here, not per file
        if src.kind == "visual_genome" and not src.image_data:
            raise FileNotFoundError(f"source {src.name}: visual_genome needs image_data: image_data.json")
        if src.translate and src.translate.backend == "lookup":
            if not src.translate.table or not paths.exists(src.translate.table):
                raise FileNotFoundError(
                    f"source {src.name}: translate.table not found: {src.translate.table}"
                )
    for f in cfg.filters.blacklist.extra_files:
        if not paths.exists(f):
            raise FileNotFoundError(f"zhclip.filters.blacklist.extra_files: not found: {f}")
    return files


def clear_outputs(out: str) -> None:
    """Remove a previous run's stage-1 files so a rerun cannot mix old shards in."""
    remove_spill(out, "metadata")
    for f in paths.list_files(paths.join(out, METADATA_DIR), ".parquet"):
        paths.remove(f)
    for f in paths.list_files(paths.join(out, REJECTS_DIR), ".parquet"):
        if f.rsplit("/", 1)[-1].startswith("metadata-"):
            paths.remove(f)


# ---------------------------------------------------------------------- DoFns
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
        bar = tqdm(desc=f"stage 1 {name}:{path.rsplit('/', 1)[-1]}", unit=" rows", unit_scale=True,
                   disable=None, leave=False, mininterval=1.0)
        for b in read_source_file(src, path):
            bar.update(b.rows_in)
            self._rows_in.inc(b.rows_in)
            yield beam.pvalue.TaggedOutput(COUNTS, R.counts(name, rows_in=b.rows_in, reasons=b.skipped,
                                                                  unknown=b.unknown))
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


class WriteUrlShards(beam.DoFn):
    """Write one bucket's kept rows as URL shards of N rows (the last one fewer).

    A bucket arrives as hash groups, each sorted by key; rows left over from
    one group open the next shard, so shard sizes do not depend on the group
    count. File names depend only on the bucket and the part number, and the
    rows on the input, so a retried bundle rewrites the same bytes under the
    same names.
    """

    def __init__(self, out: str, rows_per_shard: int):
        self._out = out
        self._n = rows_per_shard

    def start_bundle(self) -> None:
        self._open: dict[int, tuple[int, pa.Table | None]] = {}  # bucket -> (next part, leftover rows)

    def process(self, element: tuple[int, pa.Table, bool]):
        bucket, table, last = element
        part, leftover = self._open.pop(bucket, (0, None))
        if leftover is not None:
            table = pa.concat_tables([leftover, table])
        start = 0
        while table.num_rows - start >= self._n or (last and start < table.num_rows):
            self._write(bucket, part, table.slice(start, self._n))
            part, start = part + 1, start + self._n
        if not last:
            self._open[bucket] = (part, table.slice(start).combine_chunks())
        Metrics.counter("zhclip.metadata", "kept").inc(element[1].num_rows)
        for item in pc.value_counts(element[1].column(S.SOURCE)).to_pylist():
            yield R.counts(item["values"], kept=item["counts"])

    def _write(self, bucket: int, part: int, chunk: pa.Table) -> None:
        name = f"{bucket:05d}-{part:04d}.parquet"
        paths.write_parquet_atomic(S.url_shard_table(chunk), paths.join(self._out, METADATA_DIR, name))


class WriteRejects(beam.DoFn):
    """One bucket of reject tables -> rejects/metadata-{bucket}.parquet.

    Written group by group (row groups of one file, each sorted by key and
    reason), so a bucket of rejects never has to fit in memory at once.
    """

    def __init__(self, out: str, n_buckets: int, group_rows: int):
        self._out = out
        self._n, self._group_rows = n_buckets, group_rows

    def process(self, element: tuple[int, list[str]]):
        bucket, part_paths = element
        counts: list[R.Counts] = []

        def sorted_groups():
            for group in read_groups(part_paths, self._n, self._group_rows):
                grouped = group.group_by([S.SOURCE, S.REASON]).aggregate([([], "count_all")])
                counts.extend(R.counts(row[S.SOURCE] or "?", reasons={row[S.REASON]: row["count_all"]})
                              for row in grouped.to_pylist())
                Metrics.counter("zhclip.metadata", "rejected").inc(group.num_rows)
                yield group.sort_by([(S.KEY, "ascending"), (S.REASON, "ascending")])

        paths.write_parquet_atomic(sorted_groups(),
                                   paths.join(self._out, REJECTS_DIR, f"metadata-{bucket:05d}.parquet"),
                                   schema=S.REJECT_SCHEMA)
        yield from counts


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


class MergeCounts(beam.CombineFn):
    def create_accumulator(self):
        return {}

    def add_input(self, acc, item):
        return R.merge_counts([acc, item])

    def merge_accumulators(self, accs):
        return R.merge_counts(accs)

    def extract_output(self, acc):
        return acc


# --------------------------------------------------------- composite transforms
class WriteRejectShards(beam.PTransform):
    """(bucket, part file) pairs of rejects -> one sorted rejects file per bucket."""

    def __init__(self, out: str, n_buckets: int, group_rows: int):
        super().__init__()
        self._write = WriteRejects(out, n_buckets, group_rows)

    def expand(self, spilled):
        return (
            spilled
            | "GroupRejects" >> beam.GroupByKey()
            | "Write" >> beam.ParDo(self._write)
        )


class WriteReport(beam.PTransform):
    def __init__(self, out: str, extra: dict[str, Any]):
        super().__init__()
        self._out, self._extra = out, extra

    def expand(self, counts):
        out, extra = self._out, self._extra

        def write(merged: R.Counts) -> dict[str, Any]:
            report = R.finalize("metadata", merged, extra)
            report["shards"] = len(paths.list_files(paths.join(out, METADATA_DIR), ".parquet"))
            paths.write_bytes_atomic(paths.join(out, REPORT_DIR, "metadata.json"), R.to_json(report))
            return report

        return counts | "Merge" >> beam.CombineGlobally(MergeCounts()) | "WriteJson" >> beam.Map(write)


def build_pipeline(p: beam.Pipeline, cfg: Config, files: list[tuple[str, str]]) -> None:
    """files | ReadSources | TranslateCaptions | ApplyRules | SpillByUrl
    -> GroupBucket | DedupBucket | SpillByKey -> GroupKeyBucket | DedupKeyBucket | WriteUrlShards; rejects of every step -> WriteRejects;
    counts of every step -> WriteReport."""
    out = cfg.output
    cfg_dict = config_to_dict(cfg)
    n_buckets, group_rows = cfg.metadata.dedup_buckets, cfg.metadata.group_rows
    caption_sources = frozenset(s.name for s in cfg.sources if s.dedup == "url_caption")
    spill_rejects = SpillRejects(out, n_buckets)

    steps: list[beam.DoFn] = [ReadSources(cfg_dict)]
    translate_cfgs = {s.name: s.translate for s in cfg.sources if s.translate is not None}
    if translate_cfgs:
        from zhclip.pipeline.metadata.translate import TranslateCaptions

        steps.append(TranslateCaptions(translate_cfgs))
    image_mode = frozenset(s.name for s in cfg.sources if s.kind == "visual_genome" and s.mode == "image")
    if image_mode:
        steps.append(JoinRegionsFn(image_mode, cfg.filters.caption.max_chars))
    file_sources = tuple(s.name for s in cfg.sources if s.image_root)
    steps += [ApplyRulesFn(RuleSet.from_config(cfg.filters, file_sources)),
              SpillByUrl(out, n_buckets, caption_sources)]

    read = (
        p
        | "Files" >> beam.Create(files)
        | "Spread" >> beam.Reshuffle()
        | "ReadTranslateRulesSpill" >> beam.ParDo(Chain(steps, spill_rejects)).with_outputs(
            SPILLED_REJECTS, COUNTS, main="spilled")
    )
    by_url = (
        read.spilled
        | "GroupBucket" >> beam.GroupByKey()
        | "DedupUrlsSpillKeys" >> beam.ParDo(Chain(
            [DedupBucket(caption_sources, n_buckets, group_rows), SpillByKey(out, n_buckets)],
            spill_rejects)).with_outputs(SPILLED_REJECTS, main="spilled")
    )
    written = (
        by_url.spilled
        | "GroupKeyBucket" >> beam.GroupByKey()
        | "DedupKeysAndWrite" >> beam.ParDo(Chain(
            [DedupKeyBucket(n_buckets, group_rows), WriteUrlShards(out, cfg.metadata.rows_per_shard)],
            spill_rejects)).with_outputs(SPILLED_REJECTS, main="counts")
    )
    reject_counts = (
        (read[SPILLED_REJECTS], by_url[SPILLED_REJECTS], written[SPILLED_REJECTS])
        | "AllRejects" >> beam.Flatten()
        | "WriteRejects" >> WriteRejectShards(out, n_buckets, group_rows)
    )
    extra = {"config": cfg_dict, "inputs": len(files)}
    (
        (read[COUNTS], written.counts, reject_counts)
        | "AllCounts" >> beam.Flatten()
        | "Report" >> WriteReport(out, extra)
    )


def commit_url_shards(folder: str) -> None:
    """Write stage 1's completion marker, last: every URL shard in place, with its rows."""
    import pyarrow.parquet as pq

    rows = {}
    for shard in stage_marker.shard_files_in(folder):
        with paths.open_input(shard) as f:
            rows[shard.rsplit("/", 1)[-1]] = pq.read_metadata(f).num_rows
    stage_marker.mark_committed(folder, rows)


def pipeline_options(beam_args: list[str]) -> PipelineOptions:
    return PipelineOptions(beam_args)


def run_metadata(cfg: Config, beam_args: list[str] | None = None) -> dict[str, Any]:
    """Run stage 1 and return the report (also written to OUT/report/metadata.json)."""
    files = plan_inputs(cfg)
    RuleSet.from_config(cfg.filters)  # bad networks etc. fail before the pipeline
    paths.makedirs(cfg.output)
    shard_folder = paths.join(cfg.output, METADATA_DIR)
    stage_marker.mark_started(shard_folder)  # before any old shard is touched
    clear_outputs(cfg.output)
    started = time.time()
    try:
        with beam.Pipeline(options=pipeline_options(beam_args or [])) as p:
            build_pipeline(p, cfg, files)
    finally:
        remove_spill(cfg.output, "metadata")  # a failed run (full disk) leaves no spill behind
    commit_url_shards(shard_folder)
    report_path = paths.join(cfg.output, REPORT_DIR, "metadata.json")
    if not paths.exists(report_path):
        # No rows at all reached the counts (empty inputs): still write a report.
        report = R.finalize("metadata", {}, {"config": config_to_dict(cfg), "inputs": len(files)})
        report["shards"] = 0
        paths.write_bytes_atomic(report_path, R.to_json(report))
    report = json.loads(paths.read_text(report_path))
    report["seconds"] = round(time.time() - started, 3)
    return report


# ------------------------------------------------------------------------ CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)


def main(args: argparse.Namespace, beam_args: list[str]) -> int:
    apply_common_arguments(args)
    cfg = config_from_args(args)
    report = run_metadata(cfg, beam_args)
    if not args.quiet:
        R.print_funnel(report, "stage 1 (metadata) funnel")
        print(f"URL shards: {report['shards']} in {paths.join(cfg.output, METADATA_DIR)}  "
              f"report: {paths.join(cfg.output, REPORT_DIR, 'metadata.json')}")
    return 0 if report["total"]["balanced"] else 1
