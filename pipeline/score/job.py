"""Stage 3, `zhclip score`: downloaded shards -> scored, filtered, deduplicated final shards.

    download shards | Reshuffle | ScoreShard (decode, CLIP preprocess, score in
    fixed batches, per-source threshold, test-set overlap) | DedupExactImages (sha256)
    | DedupNearImages (perceptual hash), both in image_dedup.py
    | RankForShards | JoinSamples | WriteShards | manifest + report

The model is built once per worker (DoFn.setup through Beam's Shared handle)
and batches are cut inside each download shard in key order, so a pair's
score does not depend on how the runner bundled elements: two runs give the
same scores, hence the same shards, byte for byte. Every sample of the final
shards gets a global position (a hash of its key), so shard contents do not
depend on worker count or timing either.

Outputs: OUT/dataset/{split}/{split}-{index:06d}.tar + .parquet + sizes.json,
OUT/dataset/manifest.json + README.md (Hugging Face dataset card),
OUT/rejects/score-*.parquet (REJECT_SCHEMA, stage "score"), OUT/report/score.json;
with score.save_embeddings, OUT/embeddings/{img_emb,text_emb,metadata}/ (embeddings.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.utils.shared import Shared
from zhclip.pipeline.core import paths
from zhclip.pipeline.core import report as R
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.core.cliargs import add_common_arguments, apply_common_arguments
from zhclip.pipeline.core.config import (
    Config,
    ConfigError,
    config_from_args,
    config_from_dict,
    config_to_dict,
)
from zhclip.pipeline.core.memory import release_free_memory
from zhclip.pipeline.core.runner import make_pipeline
from zhclip.pipeline.core.spill import remove_spill, spill_folder
from zhclip.pipeline.core.tags import TAG_COUNTS, TAG_REJECTS
from zhclip.pipeline.score import embeddings as E
from zhclip.pipeline.score.backends import build_scorer
from zhclip.pipeline.score.final_shards import (
    TAG_EMBEDDINGS,
    WriteShard,
    assign_positions,
    bucket_of,
    join_position,
    sorted_bucket,
    spill_images,
)
from zhclip.pipeline.score.image_dedup import DedupExactImages, DedupNearImages, index_entry
from zhclip.pipeline.score.preflight import check_model_paths, eval_image_hashes
from zhclip.pipeline.score.steps import (
    HIST_BINS,
    HIST_RANGE,
    MAX_NOTES,
    STAGE,
    ShardScorer,
    histogram,
)
from zhclip.pipeline.score.thresholds import plan_thresholds
from zhclip.pipeline.shards import downloads as DL
from zhclip.pipeline.shards import format as SH
from zhclip.pipeline.shards import manifest as MF

log = logging.getLogger(__name__)

REJECTS_DIR = "rejects"
REPORT_DIR = "report"
REPORT_NAME = "score.json"
REJECT_FILE_PREFIX = "score-"
REJECTS = TAG_REJECTS
COUNTS = TAG_COUNTS
HIST = "hist"


class _ScorerHolder:
    """Weak-referenceable box so Beam's Shared can keep one scorer per process."""

    def __init__(self, scorer: Any) -> None:
        self.scorer = scorer


# --- Beam transforms --------------------------------------------------------------------


class ScoreShard(beam.DoFn):
    """One download shard -> kept samples (main), rejects, funnel counts, score histograms.

    The work is :class:`~zhclip.pipeline.score.steps.ShardScorer`'s; this only
    routes its result to the tagged outputs.
    """

    def __init__(self, cfg: dict[str, Any], eval_hashes: list[int], shared: Shared) -> None:
        self._cfg = cfg
        self._eval_hashes = eval_hashes
        self._shared = shared

    def setup(self) -> None:
        cfg = config_from_dict(self._cfg)
        scorer = self._shared.acquire(lambda: _ScorerHolder(build_scorer(cfg.score))).scorer
        self._steps = ShardScorer(scorer, cfg.score, cfg.shards.val_fraction, self._eval_hashes,
                                  thresholds=plan_thresholds(cfg).by_source)
        self._spill = spill_folder(cfg.output, "score", "images")
        self._pairs = Metrics.counter("zhclip.score", "pairs_scored")
        self._shards = Metrics.counter("zhclip.score", "shards_read")

    def teardown(self) -> None:
        steps = getattr(self, "_steps", None)
        if steps is not None:
            steps.close()

    def process(self, shard: DL.DownloadShard) -> Iterator[Any]:
        before = self._steps.pairs_scored
        result, contents = self._steps.score_shard(shard)
        self._pairs.inc(self._steps.pairs_scored - before)
        self._shards.inc()
        for row in result.rejects:
            yield beam.pvalue.TaggedOutput(REJECTS, row)
        yield from spill_images(result.kept, self._spill)
        yield beam.pvalue.TaggedOutput(COUNTS, result.funnel_counts())
        yield beam.pvalue.TaggedOutput(HIST, {
            "scores": {src: histogram(v) for src, v in result.scores.items()},
            "not_downloaded": contents.not_success_rows,
            "notes": contents.notes[:MAX_NOTES],
        })
        del result, contents
        release_free_memory()  # the shard's pixels are gone: keep the worker's memory flat


def write_reject_file(element: tuple[int, list[dict[str, Any]]], folder: str) -> str:
    index, rows = element
    rows = sorted(rows, key=lambda r: (r[S.KEY] or "", r[S.REASON]))
    table = pa.Table.from_pylist(rows, schema=S.REJECT_SCHEMA)
    name = f"{REJECT_FILE_PREFIX}{index:05d}.parquet"
    paths.write_parquet_atomic(table, paths.join(folder, name))
    return name


def _merge_hist(items: list[dict[str, Any]]) -> dict[str, Any]:
    scores: dict[str, list[int]] = {}
    not_downloaded = 0
    notes: list[str] = []
    for item in items:
        not_downloaded += item["not_downloaded"]
        notes.extend(item["notes"])
        for src, counts in item["scores"].items():
            acc = scores.setdefault(src, [0] * HIST_BINS)
            scores[src] = [a + b for a, b in zip(acc, counts, strict=True)]
    return {"scores": scores, "not_downloaded": not_downloaded, "notes": sorted(notes)[:MAX_NOTES]}


def finalize(_: Any, out: str, cfg_dict: dict[str, Any], shard_infos: list[dict[str, Any]],
             counts: list[R.Counts], hists: list[dict[str, Any]], reject_files: list[str],
             extra: dict[str, Any], embeddings: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Write manifest.json, remove an earlier run's leftovers, write report/score.json.

    The report's ``warnings`` list says what the run could not do as configured
    (a LAION source without a threshold, ...); :func:`run_score` logs each on the driver.
    """
    plan = plan_thresholds(config_from_dict(cfg_dict))
    dataset = paths.join(out, SH.DATASET_DIR)
    kept_embeddings = E.finish_embeddings(paths.join(out, E.EMBEDDINGS_DIR), embeddings or [])
    manifest, stale = MF.finish_dataset(
        dataset, shard_infos, cfg_dict,
        extra={"embeddings": kept_embeddings} if kept_embeddings else None)
    for uri in paths.list_files(paths.join(out, REJECTS_DIR), ".parquet"):
        name = uri.rpartition("/")[2]
        if name.startswith(REJECT_FILE_PREFIX) and name not in reject_files:
            paths.remove(uri)
    hist = _merge_hist(hists)
    merged = R.merge_counts(counts)
    warnings = plan.runtime_warnings(merged)
    step = (HIST_RANGE[1] - HIST_RANGE[0]) / HIST_BINS
    report = R.finalize(STAGE, merged, {
        **extra,
        "source_thresholds": dict(sorted(plan.by_source.items())),
        "warnings": warnings,
        "shards": {"count": len(manifest["shards"]), "splits": manifest["splits"],
                   "folder": dataset},
        "rejects": sorted(reject_files),
        "not_downloaded_rows": hist["not_downloaded"],
        "histogram": {
            "bin_edges": [round(HIST_RANGE[0] + i * step, 6) for i in range(HIST_BINS + 1)],
            "counts": dict(sorted(hist["scores"].items())),
        },
        "notes": hist["notes"],
        "removed_stale_files": stale,
    })
    paths.write_bytes_atomic(paths.join(out, REPORT_DIR, REPORT_NAME), R.to_json(report))
    return report


def build_pipeline(p: beam.Pipeline, cfg: Config, shards: list[DL.DownloadShard],
                   eval_hashes: list[int]) -> None:
    out = cfg.output
    cfg_dict = config_to_dict(cfg)
    dataset = paths.join(out, SH.DATASET_DIR)
    embeddings = paths.join(out, E.EMBEDDINGS_DIR) if cfg.score.save_embeddings else None
    sps = cfg.shards.samples_per_shard
    n_reject_files = max(1, math.ceil(len(shards) / 64))

    scored = (
        p
        | "DownloadShards" >> beam.Create(shards)
        | "Spread" >> beam.Reshuffle()
        | "ScoreShard" >> beam.ParDo(ScoreShard(cfg_dict, eval_hashes, Shared())).with_outputs(
            REJECTS, COUNTS, HIST, main="kept")
    )
    kept = scored.kept
    reject_parts, count_parts = [scored[REJECTS]], [scored[COUNTS]]

    index = kept | "IndexEntry" >> beam.Map(index_entry)
    if cfg.score.dedup_images:
        caption_sources = frozenset(s.name for s in cfg.sources if s.dedup == "url_caption")
        dedup = kept | "DedupExact" >> DedupExactImages(caption_sources)
        index = dedup.winners
        reject_parts.append(dedup[REJECTS])
        count_parts.append(dedup[COUNTS])
    if cfg.score.near_duplicates:
        caption_sources = frozenset(s.name for s in cfg.sources if s.dedup == "url_caption")
        near = index | "NearDuplicates" >> DedupNearImages(cfg.score.near_duplicate_distance, caption_sources)
        index = near.winners
        reject_parts.append(near[REJECTS])
        count_parts.append(near[COUNTS])

    buckets = (
        index
        | "ToBucket" >> beam.Map(bucket_of)
        | "GroupBucket" >> beam.GroupByKey()
        | "SortBucket" >> beam.Map(sorted_bucket)
    )
    sizes = buckets | "BucketSize" >> beam.Map(lambda kv: (kv[0], len(kv[1])))
    positions = buckets | "Positions" >> beam.FlatMap(
        assign_positions, sizes=beam.pvalue.AsDict(sizes), samples_per_shard=sps)
    records = kept | "ByKey" >> beam.Map(lambda r: (r[S.KEY], r))
    written = (
        {"pos": positions, "rec": records}
        | "JoinPosition" >> beam.CoGroupByKey()
        | "ToShard" >> beam.FlatMap(join_position)
        | "GroupShard" >> beam.GroupByKey()
        | "WriteShards" >> beam.ParDo(
            WriteShard(dataset, embeddings, sps), sizes=beam.pvalue.AsDict(sizes)).with_outputs(
                COUNTS, TAG_EMBEDDINGS, main="infos")
    )
    count_parts.append(written[COUNTS])

    reject_files = (
        tuple(reject_parts)
        | "AllRejects" >> beam.Flatten()
        | "RejectBucket" >> beam.Map(
            lambda r: (int(SH.order_key(r[S.KEY] or "")[:8], 16) % n_reject_files, r))
        | "GroupRejects" >> beam.GroupByKey()
        | "WriteRejects" >> beam.Map(write_reject_file, folder=paths.join(out, REJECTS_DIR))
    )
    counts = tuple(count_parts) | "AllCounts" >> beam.Flatten()
    extra = {
        "backend": cfg.score.backend,
        "model": cfg.score.model if cfg.score.backend != "precomputed" else None,
        "thresholds": dict(cfg.score.thresholds),  # as configured; source_thresholds: resolved
        "dedup_images": cfg.score.dedup_images,
        "near_duplicates": cfg.score.near_duplicates,
        "near_duplicate_distance": cfg.score.near_duplicate_distance,
        "save_embeddings": cfg.score.save_embeddings,
        "decontaminate": cfg.score.decontaminate,
        "eval_images": len(eval_hashes),
        "download_shards": len(shards),
    }
    (
        p
        | "Once" >> beam.Create([None])
        | "Finalize" >> beam.Map(
            finalize, out=out, cfg_dict=cfg_dict,
            shard_infos=beam.pvalue.AsList(written.infos),
            counts=beam.pvalue.AsList(counts),
            hists=beam.pvalue.AsList(scored[HIST]),
            reject_files=beam.pvalue.AsList(reject_files),
            extra=extra,
            embeddings=beam.pvalue.AsList(written[TAG_EMBEDDINGS]))
    )


# --- driver ------------------------------------------------------------------------------


def run_score(cfg: Config, beam_args: list[str] | None = None,
              downloads: str | None = None) -> dict[str, Any]:
    """Run stage 3 on ``downloads`` (default OUT/downloads); returns the report dict.

    Also written to OUT/report/score.json. The model is checked on the driver
    first so that a wrong path fails in seconds, not inside every worker.
    """
    E.check_config(cfg.score)
    folder = downloads or paths.join(cfg.output, SH.DOWNLOADS_DIR)
    shards = DL.list_download_shards(folder)
    if not shards:
        raise FileNotFoundError(f"no download shards (*.tar / *.parquet) in {folder}; "
                                "run `zhclip download` first or pass --downloads")
    absent = DL.check_download_columns(shards, folder)
    if absent:
        log.warning("%s lacks column(s) %s: %s", folder, ", ".join(absent),
                    "keys stay img2dataset's own" if S.ZHCLIP_KEY in absent else "left null")
    if cfg.score.decontaminate is not None and not cfg.score.decontaminate:
        raise ConfigError("score.decontaminate: empty folder name")
    eval_hashes = eval_image_hashes(cfg.score.decontaminate)
    check_model_paths(cfg)
    started = time.time()
    remove_spill(cfg.output, "score")
    with make_pipeline(beam_args) as p:
        build_pipeline(p, cfg, shards, eval_hashes)
    remove_spill(cfg.output, "score")
    report = json.loads(paths.read_text(paths.join(cfg.output, REPORT_DIR, REPORT_NAME)))
    report["seconds"] = round(time.time() - started, 3)
    for message in report.get("warnings", []):
        log.warning("score: %s", message)
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--downloads", help="img2dataset output folder to score "
                        "(default OUT/downloads)")


def main(args: argparse.Namespace, beam_args: list[str]) -> int:
    apply_common_arguments(args)
    cfg = config_from_args(args)
    report = run_score(cfg, beam_args, downloads=args.downloads)
    if not args.quiet:
        R.print_funnel(report, "stage 3 (score) funnel")
        print(f"final shards: {report['shards']['count']} in {report['shards']['folder']}  "
              f"report: {paths.join(cfg.output, REPORT_DIR, REPORT_NAME)}")
    for message in report.get("warnings", []):
        print(f"WARNING: {message}", file=sys.stderr)
    return 0 if report["total"]["balanced"] else 1
