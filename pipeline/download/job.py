"""Stage 2, ``zhclip download``: URL shards -> downloaded webdataset shards, as a Beam job.

One Beam element per URL shard (OUT/metadata/*.parquet). A Reshuffle breaks
fusion with the tiny Create step, so a runner spreads shards over workers,
and each element runs img2dataset's per-shard Downloader through the guarded
fetch path (pipeline.fetch). Each shard's outputs are committed atomically and
checked on the next run (pipeline.download_shard), so the job can be killed
and started again, and ``--retry-failed`` fetches only what failed.

    zhclip download --config configs/demo.yaml [--retry-failed] [beam flags]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import threading
import time

import fsspec
from zhclip.pipeline.core import stage_marker
from zhclip.pipeline.core.cliargs import add_common_arguments, apply_common_arguments
from zhclip.pipeline.core.config import (
    ConfigError,
    config_from_args,
    config_from_dict,
    config_to_dict,
)
from zhclip.pipeline.download.report import build_report, write_report
from zhclip.pipeline.download.shard import (
    DOWNLOADS_DIR,
    WORK_DIR,
    BadUrlShard,
    download_shard,
    shard_files,
    shard_name,
)
from zhclip.pipeline.download.worker import run_shard_in_child

METADATA_DIR = "metadata"
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="fetch again only the rows whose status is not success, merging into each shard",
    )
    parser.add_argument(
        "--shard",
        dest="shards",
        action="append",
        default=[],
        metavar="NAME",
        help="only this URL shard (file stem under OUT/metadata); repeatable",
    )
    add_common_arguments(parser)


def list_url_shards(output: str) -> list[str]:
    """The committed stage-1 URL shards under OUT/metadata, sorted by name.

    Only the shards stage 1's completion marker names (pipeline.core.stage_marker):
    a killed stage 1's partial or ``.tmp-*`` files are never downloaded. A
    folder made by hand, with no trace of a stage-1 run, is read as it is.
    """
    folder = f"{output.rstrip('/')}/{METADATA_DIR}"
    fs, root = fsspec.core.url_to_fs(folder)
    if not fs.isdir(root):
        raise FileNotFoundError(
            f"{output}/{METADATA_DIR} does not exist: run `zhclip metadata` first "
            "(stage 2 reads the URL shards stage 1 writes)"
        )
    try:
        committed = stage_marker.committed_shards(folder)
    except stage_marker.UncommittedShards as err:
        raise ConfigError(str(err)) from None
    if committed is not None:
        return committed.paths
    log.warning("%s has no %s: reading its shards as they are", folder, stage_marker.MARKER_NAME)
    paths = sorted(p for p in fs.glob(f"{root}/*.parquet")
                   if not p.rsplit("/", 1)[-1].startswith("."))
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol not in ("file", "local"):
        paths = [f"{protocol}://{p}" for p in paths]
    return paths


def _absolute_output(cfg):
    """A copy of ``cfg`` whose local output is absolute, so workers in other folders agree."""
    if "://" in cfg.output:
        return cfg
    data = config_to_dict(cfg)
    data["output"] = os.path.abspath(cfg.output)
    return config_from_dict(data)


def _check_fetch_policy(cfg) -> None:
    from zhclip.filters.addresses import AllowNetworkError
    from zhclip.pipeline.download.fetch import FetchPolicy

    try:
        FetchPolicy.from_config(cfg)
    except AllowNetworkError as err:
        raise ConfigError(str(err)) from None


# --- Beam --------------------------------------------------------------------------


def _beam_transforms():
    """The Beam pieces, built on first use so importing this module stays cheap."""
    import apache_beam as beam

    class DownloadShardFn(beam.DoFn):
        """Runs img2dataset on one URL shard in a warm child process (pipeline.shard_worker);
        safe to run twice (see pipeline.download_shard)."""

        def __init__(self, cfg_dict: dict, retry_failed: bool, isolate: bool = True):
            self.cfg_dict = cfg_dict
            self.retry_failed = retry_failed
            self.isolate = isolate

        def process(self, metadata_path: str):
            try:
                if self.isolate:
                    yield run_shard_in_child(metadata_path, self.cfg_dict, self.retry_failed)
                else:
                    yield download_shard(metadata_path, config_from_dict(self.cfg_dict),
                                         retry_failed=self.retry_failed)
            except BadUrlShard as err:
                # One unreadable shard must not stop the others; the report lists it
                # as not done and the command exits non-zero.
                log.error("%s", err)
                yield {"shard": shard_name(metadata_path), "outcome": "bad_input",
                       "error": str(err)}

    class DownloadShards(beam.PTransform):
        """URL shard paths -> one summary dict per shard, outputs written as a side effect."""

        def __init__(self, cfg, retry_failed: bool = False, isolate: bool = True):
            super().__init__()
            self.cfg_dict = config_to_dict(cfg)
            self.retry_failed = retry_failed
            self.isolate = isolate

        def expand(self, shard_paths):
            return (
                shard_paths
                | "BreakFusion" >> beam.Reshuffle()
                | "Download" >> beam.ParDo(
                    DownloadShardFn(self.cfg_dict, self.retry_failed, self.isolate)
                )
            )

    return beam, DownloadShards


def build_pipeline(pipeline, cfg, shard_paths: list[str], retry_failed: bool = False,
                   isolate: bool = True):
    """Add the download job to ``pipeline``: Create(shards) | DownloadShards(cfg)."""
    beam, DownloadShards = _beam_transforms()
    return (
        pipeline
        | "UrlShards" >> beam.Create(shard_paths)
        | "DownloadShards" >> DownloadShards(cfg, retry_failed, isolate)
    )


# --- progress --------------------------------------------------------------------------


class ShardProgress:
    """A tqdm bar of shards done and samples/s, fed by watching the stats files appear.

    Watching the output folder works the same whatever runner executes the
    shards (threads, processes), as long as the driver can see OUT.
    """

    def __init__(self, output: str, shards: list[str], enabled: bool = True, interval: float = 0.5):
        self.output = output
        self.shards = shards
        self.enabled = enabled
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _mtime(self, path: str) -> float | None:
        try:
            fs, p = fsspec.core.url_to_fs(path)
            info = fs.info(p)
            return float(info.get("mtime") or info.get("created") or 0.0)
        except (FileNotFoundError, OSError):
            return None

    def _run(self) -> None:
        import json

        from tqdm import tqdm

        stats_paths = {s: shard_files(self.output, s).stats for s in self.shards}
        before = {s: self._mtime(p) for s, p in stats_paths.items()}
        started = time.time()
        done: set[str] = set()
        samples = 0
        with tqdm(total=len(self.shards), unit="shard", desc="download", dynamic_ncols=True) as bar:
            while True:
                stopping = self._stop.is_set()
                for shard, path in stats_paths.items():
                    if shard in done:
                        continue
                    mtime = self._mtime(path)
                    if mtime is None:
                        continue
                    if before[shard] is not None and mtime == before[shard] and not stopping:
                        continue
                    done.add(shard)
                    if mtime != before[shard]:
                        try:
                            with fsspec.open(path, "r", encoding="utf-8") as f:
                                samples += int(json.load(f).get("count", 0))
                        except (OSError, ValueError):
                            pass
                    bar.update(1)
                elapsed = max(1e-6, time.time() - started)
                bar.set_postfix_str(f"{samples / elapsed:.1f} samples/s")
                if stopping:
                    break
                self._stop.wait(self.interval)

    def __enter__(self) -> ShardProgress:
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="zhclip-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


# --- entry points --------------------------------------------------------------------------


def run_download(
    cfg,
    beam_args: list[str] | None = None,
    retry_failed: bool = False,
    shards: list[str] | None = None,
    progress: bool = True,
    isolate: bool = True,
) -> dict:
    """Run stage 2 for ``cfg`` and return the report written to OUT/report/download.json.

    ``beam_args`` are PipelineOptions flags (core/runner.py picks the local runner by default);
    ``shards`` limits the job to these shard names (default: all of OUT/metadata).
    ``isolate=False`` downloads in the Beam worker itself instead of a child
    process (for debuggers, and for in-process filesystems such as memory://).
    """
    from zhclip.pipeline.core.runner import make_pipeline

    cfg = _absolute_output(cfg)
    _check_fetch_policy(cfg)
    paths = list_url_shards(cfg.output)
    all_names = [shard_name(p) for p in paths]
    if shards:
        unknown = sorted(set(shards) - set(all_names))
        if unknown:
            raise ConfigError(
                f"--shard {unknown}: no such URL shard under {cfg.output}/{METADATA_DIR} "
                f"(known: {all_names[:5]}{' ...' if len(all_names) > 5 else ''})"
            )
        paths = [p for p, n in zip(paths, all_names, strict=True) if n in set(shards)]
    selected = [shard_name(p) for p in paths]

    if paths:
        with ShardProgress(cfg.output, selected, enabled=progress):
            with make_pipeline(beam_args) as pipeline:
                build_pipeline(pipeline, cfg, paths, retry_failed, isolate)
    _remove_empty_work_dir(cfg.output)
    report = build_report(cfg.output, all_names)
    write_report(cfg.output, report)
    return report


def _remove_empty_work_dir(output: str) -> None:
    if "://" in output:
        return
    work = os.path.join(output, DOWNLOADS_DIR, WORK_DIR)
    if os.path.isdir(work) and not os.listdir(work):
        shutil.rmtree(work, ignore_errors=True)


def summary_lines(report: dict) -> list[str]:
    total, down = report["total"], report["download"]
    lines = [
        f"download: {down['shards_done']}/{down['shards']} shards, {total['rows_in']} rows, "
        f"{total['kept']} ok ({down['success_rate']:.1%})"
    ]
    for field, counts in down["by_status"].items():
        if counts:
            parts = ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda x: -x[1]))
            lines.append(f"  {field}: {parts}")
    if not total["balanced"]:
        lines.append("  ACCOUNTING MISMATCH: rows in != kept + rejected")
    return lines


def main(args: argparse.Namespace, beam_args: list[str]) -> int:
    apply_common_arguments(args)
    cfg = config_from_args(args)
    report = run_download(
        cfg,
        beam_args,
        retry_failed=args.retry_failed,
        shards=args.shards or None,
        progress=not args.no_progress,
    )
    if not args.quiet:
        for line in summary_lines(report):
            print(line)
    missing = set(report["missing_shards"])
    if args.shards:
        missing &= set(args.shards)
    if missing:
        print(f"  not done: {sorted(missing)[:10]} (run again to resume)")
    return 0 if report["total"]["balanced"] and not missing else 1
