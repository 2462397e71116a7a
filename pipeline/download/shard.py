"""One URL shard through img2dataset, written so that a killed or repeated run is harmless.

For shard ``S`` (the stem of OUT/metadata/S.parquet) the outputs are
OUT/downloads/S.tar, S.parquet, S_stats.json and OUT/rejects/download-S.parquet.
img2dataset writes them into a private work folder; they are then moved to
their final names, the stats file last. The stats file is the commit mark: it
records a digest of the input keys, and a shard counts as done only if the
stats file exists, matches the current input, and the parquet and tar agree
with it (same keys, no key twice, every success in the tar). Anything less,
e.g. files left by a run killed between two renames, is downloaded again.

``retry_failed`` fetches again only the rows whose status is not success and
merges them into the shard's existing outputs: old successes are copied, not
fetched again, and a key is never in the tar twice.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tarfile
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.download.columns import (
    STATUS,
    STATUS_SUCCESS,
)
from zhclip.pipeline.download.fetch import FetchPolicy, guarded_fetch_installed
from zhclip.pipeline.download.img2dataset_glue import WORK_NAME, WORK_SHARD_ID, build_downloader
from zhclip.pipeline.download.shard_input import (  # noqa: F401 - re-exported names
    STAGE,
    BadUrlShard,
    ShardInput,
    read_shard_input,
    write_img2dataset_input,
)
from zhclip.pipeline.download.shard_stats import (  # noqa: F401 - re-exported names
    download_rejects,
    reject_reason,
    shard_stats,
)
from zhclip.pipeline.shards.format import member_stem

DOWNLOADS_DIR = "downloads"
REJECTS_DIR = "rejects"
WORK_DIR = "_tmp"
_WORK_SUFFIX = r"\.tmp-[0-9a-f]{32}"

# Shard outcomes reported back to the job.
OUTCOME_DOWNLOADED = "downloaded"
OUTCOME_SKIPPED = "skipped"
OUTCOME_RETRIED = "retried"


@dataclass(frozen=True)
class ShardFiles:
    """Final paths of one shard's outputs."""

    shard: str
    tar: str
    parquet: str
    stats: str
    rejects: str


def shard_name(metadata_path: str) -> str:
    """Shard name of a stage-1 file: its stem (``.../00012.parquet`` -> ``00012``)."""
    base = metadata_path.rstrip("/").rsplit("/", 1)[-1]
    return base[: -len(".parquet")] if base.endswith(".parquet") else base


def shard_files(output: str, shard: str) -> ShardFiles:
    downloads = f"{output.rstrip('/')}/{DOWNLOADS_DIR}"
    return ShardFiles(
        shard=shard,
        tar=f"{downloads}/{shard}.tar",
        parquet=f"{downloads}/{shard}.parquet",
        stats=f"{downloads}/{shard}_stats.json",
        rejects=f"{output.rstrip('/')}/{REJECTS_DIR}/{STAGE}-{shard}.parquet",
    )


def _is_local(path: str) -> bool:
    fs, _ = fsspec.core.url_to_fs(path)
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


# --- consistency of existing outputs -------------------------------------------


def tar_sample_keys(path: str) -> Counter[str]:
    """How many times each sample key appears per member suffix, as a Counter of keys.

    A well-formed shard has each key once per suffix (jpg, txt, json).
    """
    per_member: Counter[str] = Counter()
    with fsspec.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
        for member in tar:
            per_member[member.name] += 1
    if any(n > 1 for n in per_member.values()):
        raise ValueError(f"{path}: a member name appears twice")
    keys: Counter[str] = Counter()
    for name in per_member:
        keys[name.split(".", 1)[0]] += 1
    return keys


def read_complete_outputs(files: ShardFiles, digest: str) -> pa.Table | None:
    """The shard's parquet if its outputs are complete and match ``digest``; else None."""
    fs, _ = fsspec.core.url_to_fs(files.stats)
    if not (fs.exists(files.stats) and fs.exists(files.parquet) and fs.exists(files.tar)
            and fs.exists(files.rejects)):
        return None
    try:
        with fsspec.open(files.stats, "r", encoding="utf-8") as f:
            stats = json.load(f)
        zh = stats["zhclip"]
        if zh["input_digest"] != digest:
            return None
        with fsspec.open(files.parquet, "rb") as f:
            table = pq.read_table(f)
        keys = table.column(S.KEY).to_pylist()
        if len(keys) != stats["count"] or len(set(keys)) != len(keys):
            return None
        statuses = table.column(STATUS).to_pylist()
        success = {member_stem(k) for k, s in zip(keys, statuses, strict=True)
                   if s == STATUS_SUCCESS}
        if len(success) != stats["successes"]:
            return None
        members = tar_sample_keys(files.tar)
        if set(members) != success or len(set(members.values())) > 1:
            return None
        return table
    except (OSError, ValueError, KeyError, TypeError, tarfile.TarError, pa.ArrowException):
        return None


# --- running img2dataset -------------------------------------------------------


def _work_folder(output: str, shard: str) -> str:
    """A fresh private folder for this attempt; stale ones of earlier attempts are removed."""
    if _is_local(output):
        base = os.path.join(fsspec.core.url_to_fs(output)[1], DOWNLOADS_DIR, WORK_DIR)
        os.makedirs(base, exist_ok=True)
        for name in os.listdir(base):
            if re.fullmatch(re.escape(shard) + _WORK_SUFFIX, name):
                shutil.rmtree(os.path.join(base, name), ignore_errors=True)
        path = os.path.join(base, f"{shard}.tmp-{uuid.uuid4().hex}")
        os.makedirs(path)
        return path
    return tempfile.mkdtemp(prefix=f"zhclip-{shard}-")


def run_img2dataset(
    table: pa.Table, dcfg, policy: FetchPolicy, work: str
) -> tuple[str, pa.Table, dict[str, int]]:
    """Download ``table``'s rows with img2dataset into ``work``.

    Returns (tar path, parquet table, fetch counts): the name lookups and
    connections the guarded fetch made for these rows and its longest single fetch
    against the deadline (exact when the shard has its process to itself, the
    default; shards overlapping in one process share the counters).
    """
    sub = os.path.join(work, f"run-{uuid.uuid4().hex[:8]}")
    os.makedirs(sub)
    input_path = os.path.join(sub, "input.feather")
    write_img2dataset_input(table, input_path)
    downloader = build_downloader(dcfg, sub, table.num_rows)
    with guarded_fetch_installed(policy) as fetch:
        # A wrapped fetch function (someone's instrumentation) may lack the counters.
        answers, clock, slots = (getattr(fetch, a, None) for a in ("answers", "clock", "slots"))
        before = (answers.lookups, answers.connections) if answers else (0, 0)
        downloader.download_shard((WORK_SHARD_ID, input_path))
        after = (answers.lookups, answers.connections) if answers else (0, 0)
    counts = {"dns_lookups": after[0] - before[0], "connections": after[1] - before[1]}
    if clock is not None:  # since the function was installed: this shard's, unless shards overlap
        counts.update(longest_fetch_s=round(clock.longest_s, 3), deadline_s=clock.deadline_s)
    if slots is not None:  # download.max_per_host: requests that waited for a slot / gave up
        counts.update(host_slot_waits=slots.waits, host_slot_timeouts=slots.gave_up)
    return (
        os.path.join(sub, f"{WORK_NAME}.tar"),
        pq.read_table(os.path.join(sub, f"{WORK_NAME}.parquet")),
        counts,
    )


def merge_tars(sources: list[str], dest: str) -> None:
    """Concatenate the members of webdataset tars into ``dest`` (a member name once)."""
    written: set[str] = set()
    with tarfile.open(dest, mode="w", format=tarfile.USTAR_FORMAT) as out:
        for src in sources:
            with fsspec.open(src, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
                for member in tar:
                    if member.name in written:
                        raise ValueError(f"merging {src}: member {member.name} already written")
                    written.add(member.name)
                    out.addfile(member, tar.extractfile(member))


def _unify(tables: list[pa.Table]) -> pa.Table:
    return pa.concat_tables(tables, promote_options="permissive")


# --- publishing ------------------------------------------------------------------


def _move(local: str, final: str) -> None:
    if _is_local(final):
        dest = fsspec.core.url_to_fs(final)[1]
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        os.replace(local, dest)
    else:
        fs, dest = fsspec.core.url_to_fs(final)
        fs.put_file(local, dest)


def publish(files: ShardFiles, work: str, tar: str, table: pa.Table, rejects: pa.Table,
            stats: dict) -> None:
    """Move the outputs to their final names; the stats file (commit mark) goes last."""
    fs, stats_path = fsspec.core.url_to_fs(files.stats)
    if fs.exists(stats_path):
        fs.rm(stats_path)
    parquet_tmp = os.path.join(work, "out.parquet")
    pq.write_table(table, parquet_tmp)
    rejects_tmp = os.path.join(work, "rejects.parquet")
    pq.write_table(rejects, rejects_tmp)
    stats_tmp = os.path.join(work, "stats.json")
    with open(stats_tmp, "w", encoding="utf-8") as f:
        json.dump(stats, f, indent=2, ensure_ascii=False)
    _move(tar, files.tar)
    _move(parquet_tmp, files.parquet)
    _move(rejects_tmp, files.rejects)
    _move(stats_tmp, files.stats)


# --- one shard -------------------------------------------------------------------


def download_shard(metadata_path: str, cfg, retry_failed: bool = False) -> dict:
    """Bring one shard's outputs up to date; returns a small summary for progress.

    Complete outputs are kept (skipped); with ``retry_failed`` their non-success
    rows are fetched again and merged. Missing, stale or half-written outputs
    are downloaded from scratch.
    """
    shard = shard_name(metadata_path)
    files = shard_files(cfg.output, shard)
    shard_input = read_shard_input(metadata_path)
    existing = read_complete_outputs(files, shard_input.digest)
    summary = {"shard": shard, "rows": shard_input.input_rows}
    if existing is not None and not retry_failed:
        return {**summary, "outcome": OUTCOME_SKIPPED, "fetched": 0}
    if existing is not None:
        to_retry = pc.not_equal(existing.column(STATUS), STATUS_SUCCESS)
        retry_keys = existing.filter(to_retry).column(S.KEY).combine_chunks()
        if len(retry_keys) == 0:
            return {**summary, "outcome": OUTCOME_SKIPPED, "fetched": 0}
        with fsspec.open(files.stats, "r", encoding="utf-8") as f:
            previous = json.load(f)
        rows = shard_input.table.filter(pc.is_in(shard_input.table.column(S.KEY), retry_keys))
        kept = existing.filter(pc.invert(to_retry))
        old_tar = files.tar
        runs = previous["zhclip"].get("download_runs", 1) + 1
        earlier_duration = float(previous.get("duration", 0.0))
        outcome = OUTCOME_RETRIED
    else:
        rows, kept, old_tar, runs, earlier_duration = shard_input.table, None, None, 1, 0.0
        outcome = OUTCOME_DOWNLOADED

    dcfg = cfg.download
    policy = FetchPolicy.from_config(cfg)
    work = _work_folder(cfg.output, shard)
    started = time.time()
    try:
        new_tar, new_table, fetch_counts = run_img2dataset(rows, dcfg, policy, work)
        if kept is not None:
            table = _unify([kept, new_table])
            tar = os.path.join(work, "merged.tar")
            merge_tars([old_tar, new_tar], tar)
        else:
            table, tar = new_table, new_tar
        duration = earlier_duration + (time.time() - started)
        stats = shard_stats(shard, table, shard_input, started, duration, runs, fetch_counts)
        rejects = download_rejects(table, shard_input.rejects)
        publish(files, work, tar, table, rejects, stats)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        **summary,
        "outcome": outcome,
        "fetched": rows.num_rows,
        "success": stats["successes"],
        "seconds": time.time() - started,
    }
