"""OUT/report/download.json: stage 2's statistics, per shard and in total.

Built from the shards' ``_stats.json`` files after the job, not from what the
job's workers returned, so the report describes every shard on disk, including
those a previous run finished and this one skipped.
"""

from __future__ import annotations

import json

import fsspec
from zhclip.pipeline.core import paths
from zhclip.pipeline.core import reasons as RS
from zhclip.pipeline.core import report as R
from zhclip.pipeline.download.shard import shard_files

REPORT_DIR = "report"
REPORT_NAME = "download.json"


def _add(into: dict, more: dict) -> None:
    for k, v in more.items():
        into[k] = into.get(k, 0) + v


def read_shard_stats(output: str, shard: str) -> dict | None:
    path = shard_files(output, shard).stats
    try:
        with fsspec.open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


# Keys of a shard's per-source counts that are totals, not reasons.
_TOTAL_KEYS = frozenset({"rows_in", "success", "failed", "rejected_before_download"})
STATUS_FIELDS = ("failed_to_download", "failed_to_resize", "rejected_before_download")


def _source_counts(counts: dict) -> dict:
    """One source's shard counts in the funnel shape of zhclip.pipeline.core.report.

    Shards written before reasons were counted per source carry only totals;
    their unexplained failures become ``download:unclassified`` so the report
    still balances and says why it cannot say more.
    """
    reasons = {k: v for k, v in counts.items() if k not in _TOTAL_KEYS}
    missing = counts.get("failed", 0) + counts.get("rejected_before_download", 0) - sum(reasons.values())
    if missing > 0:
        reasons[RS.download_reason("unclassified")] = missing
    return {"rows_in": counts.get("rows_in", 0), "kept": counts.get("success", 0),
            "reasons": reasons}


def build_report(output: str, shards: list[str]) -> dict:
    """Stage 2's funnel (the same shape as stages 1 and 3), plus per-shard detail.

    ``sources``/``total`` count rows in, kept (downloaded and resized) and
    rejected by reason (``download:<error class>``, or the reason a row was
    refused before any request); ``download`` adds shard progress and the
    failures by img2dataset status.
    """
    per_shard: dict[str, dict] = {}
    by_status: dict[str, dict] = {f: {} for f in STATUS_FIELDS}
    merged: list[R.Counts] = []
    missing = []
    duration = 0.0
    for shard in shards:
        stats = read_shard_stats(output, shard)
        if stats is None:
            missing.append(shard)
            per_shard[shard] = {"done": False}
            continue
        zh = stats["zhclip"]
        per_shard[shard] = {
            "done": True,
            "rows_in": zh["input_rows"],
            "success": zh["success"],
            **{f: zh[f] for f in STATUS_FIELDS},
            "accounting_ok": zh["accounting_ok"],
            "download_runs": zh.get("download_runs", 1),
            "duration_s": stats["duration"],
        }
        duration += stats["duration"]
        for f in STATUS_FIELDS:
            _add(by_status[f], zh[f])
        merged.append({src: _source_counts(c) for src, c in zh["per_source"].items()})
    shards_ok = all(e.get("accounting_ok", True) for e in per_shard.values())
    report = R.finalize("download", R.merge_counts(merged), {
        "download": {
            "shards": len(shards),
            "shards_done": len(shards) - len(missing),
            "duration_s": round(duration, 3),
            "by_status": by_status,
        },
        "missing_shards": missing,
        "shards": per_shard,
    })
    total = report["total"]
    total["balanced"] = total["balanced"] and shards_ok
    report["download"]["success_rate"] = (
        round(total["kept"] / total["rows_in"], 4) if total["rows_in"] else 0.0)
    return report


def write_report(output: str, report: dict) -> str:
    """Write the report atomically (temporary name, then rename); returns its path."""
    path = paths.join(output, REPORT_DIR, REPORT_NAME)
    paths.write_bytes_atomic(path, R.to_json(report))
    return path
