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
from zhclip.filters.rules import RuleSet
from zhclip.pipeline.core import paths, stage_marker
from zhclip.pipeline.core import report as R
from zhclip.pipeline.core.cliargs import add_common_arguments, apply_common_arguments
from zhclip.pipeline.core.config import Config, config_from_args, config_to_dict
from zhclip.pipeline.core.runner import make_pipeline
from zhclip.pipeline.core.spill import remove_spill
from zhclip.pipeline.core.tags import TAG_COUNTS as COUNTS
from zhclip.pipeline.core.tags import TAG_SPILLED_REJECTS as SPILLED_REJECTS
from zhclip.pipeline.metadata.steps import (
    ApplyRulesFn,
    Chain,
    DedupBucket,
    DedupKeyBucket,
    JoinRegionsFn,
    ReadSources,
    SpillByKey,
    SpillByUrl,
    SpillRejects,
)
from zhclip.pipeline.metadata.writers import (
    METADATA_DIR,
    REJECTS_DIR,
    REPORT_DIR,
    WriteRejectShards,
    WriteReport,
    WriteUrlShards,
)
from zhclip.pipeline.sources.holdout import load_holdout_ids


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
            raise FileNotFoundError(
                f"source {src.name}: visual_genome needs image_data: image_data.json"
            )
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
    image_mode = frozenset(
        s.name for s in cfg.sources if s.kind == "visual_genome" and s.mode == "image"
    )
    if image_mode:
        steps.append(JoinRegionsFn(image_mode, cfg.filters.caption.max_chars))
    file_sources = tuple(s.name for s in cfg.sources if s.image_root)
    steps += [
        ApplyRulesFn(RuleSet.from_config(cfg.filters, file_sources)),
        SpillByUrl(out, n_buckets, caption_sources),
    ]

    read = (
        p
        | "Files" >> beam.Create(files)
        | "Spread" >> beam.Reshuffle()
        | "ReadTranslateRulesSpill"
        >> beam.ParDo(Chain(steps, spill_rejects)).with_outputs(
            SPILLED_REJECTS, COUNTS, main="spilled"
        )
    )
    by_url = (
        read.spilled
        | "GroupBucket" >> beam.GroupByKey()
        | "DedupUrlsSpillKeys"
        >> beam.ParDo(
            Chain(
                [DedupBucket(caption_sources, n_buckets, group_rows), SpillByKey(out, n_buckets)],
                spill_rejects,
            )
        ).with_outputs(SPILLED_REJECTS, main="spilled")
    )
    written = (
        by_url.spilled
        | "GroupKeyBucket" >> beam.GroupByKey()
        | "DedupKeysAndWrite"
        >> beam.ParDo(
            Chain(
                [
                    DedupKeyBucket(n_buckets, group_rows),
                    WriteUrlShards(out, cfg.metadata.rows_per_shard),
                ],
                spill_rejects,
            )
        ).with_outputs(SPILLED_REJECTS, main="counts")
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
        with make_pipeline(beam_args) as p:
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
        print(
            f"URL shards: {report['shards']} in {paths.join(cfg.output, METADATA_DIR)}  "
            f"report: {paths.join(cfg.output, REPORT_DIR, 'metadata.json')}"
        )
    return 0 if report["total"]["balanced"] else 1
