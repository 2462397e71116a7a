"""OUT/report/download.json: stage 2's statistics, per shard and in total.

Built from the shards' ``_stats.json`` files after the job, not from what the
job's workers returned, so the report describes every shard on disk, including
those a previous run finished and this one skipped.
"""

from __future__ import annotations

import json
import os

import fsspec
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


def build_report(output: str, shards: list[str]) -> dict:
    """Per-shard and total counts; ``accounting_ok`` says rows in = kept + failed + rejected."""
    per_shard: dict[str, dict] = {}
    total = {
        "shards": len(shards),
        "shards_done": 0,
        "rows_in": 0,
        "success": 0,
        "failed_to_download": {},
        "failed_to_resize": {},
        "rejected_before_download": {},
        "duration_s": 0.0,
    }
    per_source: dict[str, dict] = {}
    missing = []
    for shard in shards:
        stats = read_shard_stats(output, shard)
        if stats is None:
            missing.append(shard)
            per_shard[shard] = {"done": False}
            continue
        zh = stats["zhclip"]
        entry = {
            "done": True,
            "rows_in": zh["input_rows"],
            "success": zh["success"],
            "failed_to_download": zh["failed_to_download"],
            "failed_to_resize": zh["failed_to_resize"],
            "rejected_before_download": zh["rejected_before_download"],
            "per_source": zh["per_source"],
            "accounting_ok": zh["accounting_ok"],
            "download_runs": zh.get("download_runs", 1),
            "duration_s": stats["duration"],
        }
        per_shard[shard] = entry
        total["shards_done"] += 1
        total["rows_in"] += entry["rows_in"]
        total["success"] += entry["success"]
        total["duration_s"] += entry["duration_s"]
        for field in ("failed_to_download", "failed_to_resize", "rejected_before_download"):
            _add(total[field], entry[field])
        for source, counts in entry["per_source"].items():
            _add(per_source.setdefault(source, {}), counts)
    failed = sum(sum(total[f].values()) for f in ("failed_to_download", "failed_to_resize"))
    rejected = sum(total["rejected_before_download"].values())
    total["failed_to_download_total"] = sum(total["failed_to_download"].values())
    total["failed_to_resize_total"] = sum(total["failed_to_resize"].values())
    total["success_rate"] = round(total["success"] / total["rows_in"], 4) if total["rows_in"] else 0.0
    for counts in per_source.values():
        for k in ("success", "failed", "rejected_before_download"):
            counts.setdefault(k, 0)
        counts["accounting_ok"] = counts["rows_in"] == (
            counts["success"] + counts["failed"] + counts["rejected_before_download"]
        )
    accounting_ok = (
        total["rows_in"] == total["success"] + failed + rejected
        and all(e.get("accounting_ok", True) for e in per_shard.values())
        and all(c["accounting_ok"] for c in per_source.values())
    )
    return {
        "stage": "download",
        "total": total,
        "per_source": dict(sorted(per_source.items())),
        "accounting": {
            "rows_in": total["rows_in"],
            "success": total["success"],
            "failed": failed,
            "rejected_before_download": rejected,
            "ok": accounting_ok,
        },
        "missing_shards": missing,
        "shards": per_shard,
    }


def write_report(output: str, report: dict) -> str:
    """Write the report atomically (temporary name, then rename); returns its path."""
    path = f"{output.rstrip('/')}/{REPORT_DIR}/{REPORT_NAME}"
    fs, local = fsspec.core.url_to_fs(path)
    fs.makedirs(os.path.dirname(local), exist_ok=True)
    tmp = local + ".tmp"
    with fs.open(tmp, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, ensure_ascii=False)
    fs.mv(tmp, local)
    return path
