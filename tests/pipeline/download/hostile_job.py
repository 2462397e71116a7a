"""`zhclip download` (a real Beam job, in-process) on the hostile-response set, measured.

Run as a script by test_download_job_hostile.py, in its own process, so that its
peak RSS is the job's and not pytest's. Prints one JSON line: the report's
totals, each key's error class, peak RSS growth of the process, and the longest
time any single URL held a download thread.

    python hostile_job.py OUT_FOLDER
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.core.config import config_from_dict
from zhclip.pipeline.core.memory import peak_rss_mb
from zhclip.pipeline.demo.imageserver import FAULTS, HOSTILE, ImageServer
from zhclip.pipeline.download import fetch as F
from zhclip.pipeline.download.columns import ERROR_CLASS, STATUS, STATUS_SUCCESS
from zhclip.pipeline.download.job import run_download

POISON = ["http://[1.2.3.4]/a.jpg", "http://a\uff03@127.0.0.1/a.jpg", "http://[::1/a.jpg",
          "http://example.com:99999/a.jpg", "http:///a.jpg", "javascript:alert(1)", "", None]


def timed_fetch_functions(durations: list[float]):
    """Wrap every fetch function the job makes, recording how long each call held its thread."""
    original = F.make_fetch_function

    def make(policy):
        inner = original(policy)

        def download_image(*args, **kwargs):
            started = time.monotonic()
            try:
                return inner(*args, **kwargs)
            finally:
                durations.append(time.monotonic() - started)

        return download_image

    F.make_fetch_function = make


def _peak_mb() -> float:
    return peak_rss_mb()  # VmHWM: ru_maxrss would start at the parent (pytest)'s peak


def _run_job(out: Path, rows: list[tuple[str, str | None]]) -> dict:
    table = pa.Table.from_pylist([{S.KEY: k, S.URL: u, S.CAPTION: f"一张图片{k}", S.SOURCE: "wukong"}
                                  for k, u in rows])
    (out / "metadata").mkdir(parents=True)
    pq.write_table(S.conform(table, S.METADATA_SCHEMA), out / "metadata" / "00000.parquet")
    cfg = config_from_dict({
        "output": str(out),
        "filters": {"urls": {"allow_networks": ["127.0.0.0/8"]}},
        "download": {"timeout": 1.0, "deadline": 3.0, "retries": 0, "thread_count": 4,
                     "image_size": 32},
    })
    return run_download(cfg, [], progress=False, isolate=False)


def main(out: Path) -> None:
    durations: list[float] = []
    timed_fetch_functions(durations)
    with ImageServer(drip_interval=0.2, drip_bytes=600, chunked_bytes=80 << 20) as server:
        good = [(f"good:{i}", server.image_url(f"g{i}", ("jpg", "png", "webp")[i % 3]))
                for i in range(4)]
        # A run of good images first: Beam, img2dataset and its imports (~0.9 GB
        # peak) are then paid, and the peak after it is the baseline.
        _run_job(out / "good", good)
        rss_baseline = _peak_mb()
        durations.clear()
        rows = list(good)
        rows += [(f"hostile:{k}", server.hostile_url(k)) for k in HOSTILE]
        rows += [(f"fault:{k}", server.fault_url(k)) for k in ("http_404", "slow", "decompression_bomb")]
        rows += [(f"poison:{i}", u) for i, u in enumerate(POISON)]
        started = time.monotonic()
        report = _run_job(out / "hostile", rows)
        wall = time.monotonic() - started
        rss_peak = _peak_mb()
    result = pq.read_table(out / "hostile" / "downloads" / "00000.parquet")
    classes = {k: (None if s == STATUS_SUCCESS else c) for k, s, c in zip(
        result[S.KEY].to_pylist(), result[STATUS].to_pylist(), result[ERROR_CLASS].to_pylist(),
        strict=True)}
    rejects = pq.read_table(out / "hostile" / "rejects" / "download-00000.parquet")
    print(json.dumps({
        "rows": len(rows),
        "total": report["total"],
        "accounting_ok": report["total"]["balanced"],
        "classes": classes,
        "rejected_keys": sorted(rejects[S.KEY].to_pylist()),
        "expected": {f"hostile:{k}": f.expected_class for k, f in HOSTILE.items()}
        | {f"fault:{k}": FAULTS[k].expected_class for k in ("http_404", "slow", "decompression_bomb")},
        "rss_baseline_mb": rss_baseline,
        "rss_peak_mb": rss_peak,
        "longest_url_seconds": max(durations),
        "fetches": len(durations),
        "wall_seconds": wall,
    }))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
