"""What a finished shard says about itself: img2dataset's stats fields, zhclip's accounting
of every input row, and the reject rows of the downloads that failed."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
from zhclip.pipeline.core import reasons as RS
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.core.reasons import PRIVATE_ADDRESS
from zhclip.pipeline.download.columns import (
    ERROR_CLASS,
    ERROR_MESSAGE,
    STATUS,
    STATUS_FAILED_TO_DOWNLOAD,
    STATUS_FAILED_TO_RESIZE,
    STATUS_SUCCESS,
)
from zhclip.pipeline.download.shard_input import STAGE, ShardInput


def reject_reason(error_class: str) -> str:
    """Reject reason of a failed download: ``private_address`` or ``download:<class>``."""
    if error_class == PRIVATE_ADDRESS:
        return RS.REASON_PRIVATE_ADDRESS
    return f"{RS.DOWNLOAD_PREFIX}:{error_class}"


def download_rejects(table: pa.Table, before: pa.Table) -> pa.Table:
    """Reject rows for every non-success row of a shard's parquet, with ``before``, sorted.

    img2dataset writes rows in completion order, which threads make differ from
    run to run; sorting by key and reason makes the rejects file the same bytes
    on every run and every runner.
    """
    failed = table.filter(pc.not_equal(table.column(STATUS), STATUS_SUCCESS))
    rows = RS.reject_table(
        failed.column(S.KEY).to_pylist(),
        failed.column(S.SOURCE).to_pylist(),
        failed.column(S.URL).to_pylist(),
        failed.column(S.CAPTION).to_pylist(),
        [reject_reason(c or "other") for c in failed.column(ERROR_CLASS).to_pylist()],
        STAGE,
    )
    both = pa.concat_tables([before, rows])
    return both.sort_by([(S.KEY, "ascending"), (S.REASON, "ascending")])


def shard_stats(
    shard: str,
    table: pa.Table,
    shard_input: ShardInput,
    started: float,
    duration: float,
    downloads_run: int,
    fetch_counts: dict[str, int] | None = None,
) -> dict:
    """img2dataset's stats fields for the shard, plus zhclip's breakdown and accounting."""
    statuses = table.column(STATUS).to_pylist()
    classes = table.column(ERROR_CLASS).to_pylist()
    messages = table.column(ERROR_MESSAGE).to_pylist()
    sources = table.column(S.SOURCE).to_pylist()
    by_status = Counter(statuses)
    failed: dict[str, Counter[str]] = {
        STATUS_FAILED_TO_DOWNLOAD: Counter(), STATUS_FAILED_TO_RESIZE: Counter()
    }
    per_source: dict[str, Counter[str]] = {}
    status_dict: Counter[str] = Counter()
    for status, cls, msg, source in zip(statuses, classes, messages, sources, strict=True):
        src = per_source.setdefault(source or "", Counter())
        src["rows_in"] += 1
        if status == STATUS_SUCCESS:
            src["success"] += 1
            status_dict[STATUS_SUCCESS] += 1
        else:
            src["failed"] += 1
            src[RS.download_reason(cls or "other")] += 1
            failed.setdefault(status or "unknown", Counter())[cls or "other"] += 1
            status_dict[msg or ""] += 1
    early = zip(shard_input.rejects.column(S.SOURCE).to_pylist(),
                shard_input.rejects.column(S.REASON).to_pylist(), strict=True)
    for source, reason in early:
        src = per_source.setdefault(source or "", Counter())
        src["rows_in"] += 1
        src["rejected_before_download"] += 1
        src[reason] += 1
    rejected_early = Counter(shard_input.rejects.column(S.REASON).to_pylist())
    accounted = (
        by_status[STATUS_SUCCESS]
        + sum(sum(c.values()) for c in failed.values())
        + shard_input.rejects.num_rows
    )
    return {
        # img2dataset's own fields, so its tools read these files as theirs.
        "count": table.num_rows,
        "successes": by_status[STATUS_SUCCESS],
        "failed_to_download": by_status[STATUS_FAILED_TO_DOWNLOAD],
        "failed_to_resize": by_status[STATUS_FAILED_TO_RESIZE],
        "duration": duration,
        "start_time": started,
        "end_time": started + duration,
        "status_dict": dict(status_dict.most_common()),
        "zhclip": {
            "shard": shard,
            "input_rows": shard_input.input_rows,
            "input_digest": shard_input.digest,
            "success": by_status[STATUS_SUCCESS],
            "failed_to_download": dict(failed[STATUS_FAILED_TO_DOWNLOAD]),
            "failed_to_resize": dict(failed[STATUS_FAILED_TO_RESIZE]),
            "failed_other": {k: dict(v) for k, v in failed.items()
                             if k not in (STATUS_FAILED_TO_DOWNLOAD, STATUS_FAILED_TO_RESIZE)},
            "rejected_before_download": dict(rejected_early),
            "per_source": {k: dict(v) for k, v in sorted(per_source.items())},
            "accounting_ok": accounted == shard_input.input_rows,
            "download_runs": downloads_run,
            # Name lookups and connections of the last run (resolver and network load).
            "fetch": dict(fetch_counts or {}),
        },
    }
