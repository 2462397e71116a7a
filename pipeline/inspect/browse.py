"""`zhclip shards browse PATH --out DIR`: a static contact sheet that opens from disk.

Writes DIR/index.html (page 1), DIR/page-NNNNNN.html for later pages and one
JPEG thumbnail per sample under DIR/thumbs/, all linked by relative paths, so
file:// works without a server. Samples stream in; a page is written as soon
as the first sample of the next one arrives (that is how it knows to link
"next"), so memory holds one page of captions. Each page's script records how
many thumbnails the browser loaded in ``<pre id="result">`` and the title,
which the headless-Chromium test reads back.
"""

from __future__ import annotations

import html
import io
import json
from dataclasses import dataclass

from zhclip.filters.images import ImageDecodeError, decode_image
from zhclip.pipeline.core import paths
from zhclip.pipeline.shards import reader as src

THUMB_DIR = "thumbs"
THUMB_QUALITY = 85
RESULT_ID = "result"

PAGE_STYLE = """
body{font-family:"Noto Sans CJK SC","WenQuanYi Zen Hei","PingFang SC","Microsoft YaHei",sans-serif;margin:1em;background:#fafafa}
nav{margin:.5em 0}nav a{margin-right:1em}
.grid{display:flex;flex-wrap:wrap;gap:10px}
.card{width:%(w)dpx;margin:0;background:#fff;border:1px solid #ddd;padding:4px;font-size:12px}
.card img{width:%(w)dpx;height:%(w)dpx;object-fit:contain;background:#eee;display:block}
.noimg{width:%(w)dpx;height:%(w)dpx;display:flex;align-items:center;justify-content:center;background:#fdd}
.cap{margin:3px 0;font-size:13px}.meta{color:#666;word-break:break-all}
"""

# Counts thumbnails that really decoded in the browser (naturalWidth > 0).
PAGE_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.querySelectorAll("img.thumb"));
  var ok = imgs.filter(function (im) { return im.complete && im.naturalWidth > 0; });
  var failed = imgs.filter(function (im) { return !(im.complete && im.naturalWidth > 0); })
                   .map(function (im) { return im.getAttribute("src"); });
  var result = {loaded: ok.length, total: imgs.length, failed: failed};
  document.getElementById("RESULT_ID").textContent = JSON.stringify(result);
  document.title = "loaded " + ok.length + "/" + imgs.length;
});
""".replace("RESULT_ID", RESULT_ID)


@dataclass
class Card:
    index: int
    key: str
    source: str
    score: float | None
    caption: str | None
    shard: str
    thumb: str | None  # relative path, None when the image did not decode
    error: str | None = None


def page_name(page: int) -> str:
    return "index.html" if page == 1 else f"page-{page:06d}.html"


def make_thumbnail(image: bytes, edge: int) -> bytes:
    """JPEG thumbnail that fits in edge x edge; raises ImageDecodeError for bad bytes."""
    img = decode_image(image)
    img.thumbnail((edge, edge))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=THUMB_QUALITY)
    return buf.getvalue()


def _card_html(card: Card, edge: int) -> str:
    esc = html.escape
    if card.thumb:
        picture = (f'<img class="thumb" src="{esc(card.thumb)}" width="{edge}" height="{edge}" '
                   f'alt="{esc(card.key)}" loading="eager">')
    else:
        picture = f'<div class="noimg">{esc(card.error or "no image")}</div>'
    score = "-" if card.score is None else f"{card.score:.4f}"
    caption = esc(card.caption) if card.caption is not None else "<i>(no caption)</i>"
    return (f'<figure class="card" data-key="{esc(card.key)}">{picture}'
            f'<figcaption><div class="cap">{caption}</div>'
            f'<div class="meta">{esc(card.source)} · score {score}<br>{esc(card.key)} · {esc(card.shard)}'
            f"</div></figcaption></figure>")


def page_html(title: str, page: int, cards: list[Card], has_next: bool, edge: int) -> str:
    links = []
    if page > 1:
        links.append(f'<a href="{page_name(page - 1)}">&larr; previous</a>')
    links.append(f"page {page}, samples {cards[0].index + 1}-{cards[-1].index + 1}" if cards else f"page {page}")
    if has_next:
        links.append(f'<a href="{page_name(page + 1)}">next &rarr;</a>')
    nav = "<nav>" + " ".join(links) + "</nav>"
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{PAGE_STYLE % {'w': edge}}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>{nav}<div class=\"grid\">\n"
            + "\n".join(_card_html(c, edge) for c in cards)
            + f'\n</div>{nav}<pre id="{RESULT_ID}">pending</pre>'
            f"<script>{PAGE_SCRIPT}</script></body></html>\n")


def write_browser(folder: src.ShardFolder, out: str, problems: list[str], per_page: int = 100,
                  limit: int | None = 1000, thumb: int = 160) -> list[str]:
    """Write the pages and thumbnails; returns page paths in order."""
    out = out.rstrip("/")
    paths.makedirs(paths.join(out, THUMB_DIR))
    title = f"zhclip shards: {folder.uri}"
    pages: list[str] = []
    cards: list[Card] = []

    def flush(has_next: bool) -> None:
        uri = paths.join(out, page_name(len(pages) + 1))
        paths.write_bytes_atomic(uri, page_html(title, len(pages) + 1, cards, has_next, thumb).encode("utf-8"))
        pages.append(uri)
        cards.clear()

    for i, sample in enumerate(src.iter_samples(folder, problems, progress=True)):
        if limit is not None and i >= limit:
            break
        if len(cards) == per_page:
            flush(has_next=True)
        card = Card(i, sample.key, sample.source, sample.score, sample.caption, sample.shard, None)
        if sample.image is None:
            card.error = "no image in the tar"  # iter_samples has named the problem
        else:
            try:
                rel = f"{THUMB_DIR}/{i:06d}.jpg"
                paths.write_bytes_atomic(paths.join(out, rel), make_thumbnail(sample.image, thumb))
                card.thumb = rel
            except ImageDecodeError as err:
                card.error = "image does not decode"
                problems.append(f"{sample.shard}/{sample.key}: image does not decode ({err})")
        cards.append(card)
    if cards or not pages:
        flush(has_next=False)
    paths.write_bytes_atomic(paths.join(out, "pages.json"),
                             json.dumps([p.rpartition("/")[2] for p in pages]).encode("utf-8"))
    return pages
