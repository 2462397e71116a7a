"""`zhclip shards browse OUT --rejects`: what every rule dropped, one HTML page per reason.

Reads every OUT/rejects/*.parquet (stages 1, 2 and 3), counts each reason by
stage and source, and keeps a deterministic sample per reason: the rows whose
:func:`~zhclip.pipeline.shards.format.order_key` is smallest, so a rerun shows
the same rows and a bigger run shows a superset's first rows. Each card shows
the caption, the URL, the rule's ``matched`` text and, for stage-3 rejects
(whose image was downloaded), a thumbnail read from OUT/downloads.

Everything written comes from the web, so every string is HTML-escaped with
control and bidi characters shown as escapes (as the kept-sample browser and
the report do); a URL is a link only when it is http(s). Pages reuse the
kept-sample browser's style and its load-counting script, so the same
headless-Chromium check applies.
"""

from __future__ import annotations

import hashlib
import heapq
import html
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow.parquet as pq
from zhclip.filters.images import ImageDecodeError
from zhclip.pipeline.core import paths
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.inspect.browse import (
    PAGE_SCRIPT,
    PAGE_STYLE,
    RESULT_ID,
    THUMB_DIR,
    make_thumbnail,
)
from zhclip.pipeline.inspect.escape import terminal_safe
from zhclip.pipeline.shards import downloads as DL
from zhclip.pipeline.shards import format as SH
from zhclip.pipeline.shards import reader as src

REJECTS_DIR = "rejects"
# Rejects whose image was downloaded (stage 3 decided on the pixels).
IMAGE_STAGE = "score"
DEFAULT_PER_REASON = 50
# Download shards read for thumbnails at most: a corpus-sized downloads/ is not re-read for 50 cards.
DEFAULT_MAX_DOWNLOAD_SHARDS = 64
REJECT_STYLE = (
    "table{border-collapse:collapse;background:#fff}td,th{border:1px solid #ccc;padding:2px 8px}"
    "td.n{text-align:right}.matched{color:#a00}.reason{font-family:monospace}"
)


def esc(text: Any) -> str:
    """Web text for HTML: controls and bidi overrides made visible, then HTML-escaped."""
    return html.escape(terminal_safe(text))


def reason_page(reason: str) -> str:
    """A file name per reason: readable ASCII part plus a hash (reasons hold CJK, colons)."""
    readable = re.sub(r"[^A-Za-z0-9_-]+", "_", reason).strip("_")[:48] or "reason"
    return f"reason-{readable}-{hashlib.sha256(reason.encode('utf-8')).hexdigest()[:8]}.html"


@dataclass
class ReasonSample:
    """Counts of one reason, and its sampled rows (smallest order keys first)."""

    reason: str
    count: int = 0
    by_stage: Counter = field(default_factory=Counter)
    by_source: Counter = field(default_factory=Counter)
    heap: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)  # max-heap by key

    def offer(self, row: dict[str, Any], seq: int, keep: int) -> None:
        # (negated order) keeps the `keep` smallest; seq breaks ties, so dicts never compare
        item = (_neg(SH.order_key(str(row.get(S.KEY) or ""))), -seq, row)
        if len(self.heap) < keep:
            heapq.heappush(self.heap, item)
        elif item > self.heap[0]:
            heapq.heapreplace(self.heap, item)

    def rows(self) -> list[dict[str, Any]]:
        return [r for _, _, r in sorted(self.heap, key=lambda t: (t[0], t[1]), reverse=True)]


def _neg(hex_key: str) -> str:
    """A string whose order is the reverse of ``hex_key``'s (both lower-case hex)."""
    return hex_key.translate(str.maketrans("0123456789abcdef", "fedcba9876543210"))


def collect(out: str, per_reason: int, problems: list[str]) -> dict[str, ReasonSample]:
    """Every reject file of OUT, counted and sampled per reason."""
    folder = paths.join(out, REJECTS_DIR)
    files = sorted(f for f in paths.list_files(folder, ".parquet")) if paths.exists(folder) else []
    samples: dict[str, ReasonSample] = {}
    seq = 0
    for uri in files:
        try:
            with paths.open_input(uri) as fh:
                table = pq.read_table(fh)
        except Exception as err:  # one unreadable file is named, the others still count
            problems.append(f"{uri}: unreadable reject file ({type(err).__name__}: {err})")
            continue
        for row in table.to_pylist():
            reason = str(row.get(S.REASON) or "(no reason)")
            s = samples.setdefault(reason, ReasonSample(reason))
            s.count += 1
            s.by_stage[str(row.get(S.STAGE) or "?")] += 1
            s.by_source[str(row.get(S.SOURCE) or "?")] += 1
            s.offer(row, seq, per_reason)
            seq += 1
    return samples


def thumbnails(
    out: str, dest: str, wanted: set[str], max_shards: int, edge: int, problems: list[str]
) -> dict[str, str]:
    """key -> relative thumbnail path for the wanted stage-3 rejects found in OUT/downloads."""
    folder = paths.join(out, SH.DOWNLOADS_DIR)
    if not wanted or not paths.exists(folder):
        return {}
    found: dict[str, str] = {}
    for shard in DL.list_download_shards(folder)[:max_shards]:
        for sample in DL.read_download_shard(shard).samples:
            if sample.key not in wanted or sample.key in found or sample.image is None:
                continue
            rel = f"{THUMB_DIR}/{hashlib.sha256(sample.key.encode('utf-8')).hexdigest()[:16]}.jpg"
            try:
                paths.write_bytes_atomic(paths.join(dest, rel), make_thumbnail(sample.image, edge))
            except ImageDecodeError:
                continue  # the card says the image does not decode, as stage 3 did
            found[sample.key] = rel
        if len(found) == len(wanted):
            break
    return found


def _url_html(url: Any) -> str:
    if not url:
        return "<i>(no URL)</i>"
    text = esc(url)
    if re.match(r"https?://", str(url), re.IGNORECASE):
        return f'<a href="{html.escape(str(url), quote=True)}" rel="noopener noreferrer nofollow">{text}</a>'
    return text


def _card(row: dict[str, Any], thumbs: dict[str, str], edge: int, max_shards: int) -> str:
    key = row.get(S.KEY) or ""
    stage = row.get(S.STAGE) or "?"
    if key in thumbs:
        picture = (
            f'<img class="thumb" src="{esc(thumbs[key])}" width="{edge}" height="{edge}" '
            f'alt="{esc(key)}" loading="eager">'
        )
    elif stage == IMAGE_STAGE:
        picture = (
            f'<div class="noimg">image not found in the first {max_shards} download shards, '
            "or it does not decode</div>"
        )
    else:
        picture = f'<div class="noimg">stage {esc(stage)}: no image downloaded</div>'
    caption = esc(row[S.CAPTION]) if row.get(S.CAPTION) is not None else "<i>(no caption)</i>"
    matched = row.get(S.MATCHED)
    matched_html = f'<div class="matched">matched: {esc(matched)}</div>' if matched else ""
    return (
        f'<figure class="card" data-key="{esc(key)}">{picture}<figcaption>'
        f'<div class="cap">{caption}</div>{matched_html}'
        f'<div class="meta">{esc(row.get(S.SOURCE) or "?")} · {esc(stage)} · {esc(key)}<br>'
        f"{_url_html(row.get(S.URL))}</div></figcaption></figure>"
    )


def _page(title: str, body: str, edge: int) -> str:
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f"<style>{PAGE_STYLE % {'w': edge}}{REJECT_STYLE}</style></head><body>"
        f"<h1>{esc(title)}</h1>{body}"
        f'<pre id="{RESULT_ID}">pending</pre><script>{PAGE_SCRIPT}</script></body></html>\n'
    )


def _counter_text(c: Counter) -> str:
    return ", ".join(f"{esc(k)} {n}" for k, n in sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


def reason_html(s: ReasonSample, thumbs: dict[str, str], edge: int, max_shards: int) -> str:
    rows = s.rows()
    head = (
        f'<nav><a href="index.html">&larr; all reasons</a></nav>'
        f'<p>{s.count} rows rejected as <span class="reason">{esc(s.reason)}</span>; '
        f"showing {len(rows)} (smallest order keys, the same on every run).</p>"
        f"<p>by stage: {_counter_text(s.by_stage)}<br>by source: {_counter_text(s.by_source)}</p>"
    )
    cards = "\n".join(_card(r, thumbs, edge, max_shards) for r in rows)
    return _page(f"rejected: {s.reason}", f'{head}<div class="grid">\n{cards}\n</div>', edge)


def index_html(out: str, samples: list[ReasonSample], report_link: str | None, edge: int) -> str:
    total = sum(s.count for s in samples)
    rows = "\n".join(
        f"<tr><td>{esc(', '.join(sorted(s.by_stage)))}</td>"
        f'<td class="reason"><a href="{reason_page(s.reason)}">{esc(s.reason)}</a></td>'
        f'<td class="n">{s.count}</td></tr>'
        for s in samples
    )
    back = f'<nav><a href="{report_link}">&larr; report</a></nav>' if report_link else ""
    table = (
        f"{back}<p>{total} rejected rows under {len(samples)} reasons.</p>"
        f"<table><tr><th>stage</th><th>reason</th><th>rows</th></tr>\n{rows}\n</table>"
    )
    return _page(f"zhclip rejects: {out}", table, edge)


def write_reject_browser(
    out: str,
    dest: str | None,
    problems: list[str],
    per_reason: int = DEFAULT_PER_REASON,
    thumb: int = 160,
    max_download_shards: int = DEFAULT_MAX_DOWNLOAD_SHARDS,
) -> list[str]:
    """Write DEST/index.html (default OUT/report/rejects) and one page per reason; returns the pages."""
    out = out.rstrip("/")
    if not paths.exists(out):
        raise src.InspectError(f"{out}: no such folder")
    dest = (dest or paths.join(out, "report", REJECTS_DIR)).rstrip("/")
    samples = collect(out, per_reason, problems)
    if not samples:
        raise src.InspectError(
            f"{out}: no {REJECTS_DIR}/*.parquet rows (is this a zhclip output root?)"
        )
    ordered = sorted(samples.values(), key=lambda s: (-s.count, s.reason))
    wanted = {str(r.get(S.KEY)) for s in ordered for r in s.rows() if r.get(S.STAGE) == IMAGE_STAGE}
    paths.makedirs(paths.join(dest, THUMB_DIR))
    thumbs = thumbnails(out, dest, wanted, max_download_shards, thumb, problems)
    written = []
    for s in ordered:
        uri = paths.join(dest, reason_page(s.reason))
        paths.write_bytes_atomic(
            uri, reason_html(s, thumbs, thumb, max_download_shards).encode("utf-8")
        )
        written.append(uri)
    default_dest = dest == paths.join(out, "report", REJECTS_DIR)
    index = paths.join(dest, "index.html")
    paths.write_bytes_atomic(
        index,
        index_html(out, ordered, "../summary.html" if default_dest else None, thumb).encode(
            "utf-8"
        ),
    )
    return [index, *written]
