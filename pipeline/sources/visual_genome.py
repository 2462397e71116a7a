"""Visual Genome region descriptions: one row per region phrase, with its box.

Images come from image_data.json; an image whose coco_id is a held-out COCO
test image is removed (``test_split``), since VG and COCO share ~50k images.

``mode: image`` (default, as the Chinese-CLIP authors used VG): the reader still
emits one row per region, so each phrase is translated on its own, and
:func:`join_regions` (stage 1, after translation, before the rules) turns an
image's rows into one pair whose caption joins its phrases, largest region
first. The other regions leave as ``merged_region`` rejects, so rows in =
kept + rejected still holds. ``mode: regions`` keeps one pair per region; stage 3
crops the image to the box.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
from zhclip.pipeline.core import paths
from zhclip.pipeline.core import reasons as RS
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.core.config import SourceConfig
from zhclip.pipeline.sources.common import (
    SourceBatch,
    as_int,
    as_text,
    batch,
    file_reject,
    make_key,
    rejects_for,
    rows_table,
)
from zhclip.pipeline.sources.holdout import load_holdout_ids

CHUNK = 100_000
IMAGE_SEP = "-"  # image-mode source ids: {image_id}-{region_id}
JOIN_SEP = "，"
ORIG_SEP = "; "
_TRAILING = "。．.，,;；、!！ \t"


def load_image_data(path: str) -> dict[int, dict]:
    data = json.loads(paths.read_text(path))
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of images (Visual Genome image_data.json)")
    out = {}
    for img in data:
        if isinstance(img, dict):
            image_id = as_int(img.get("image_id", img.get("id")))
            if image_id is not None:
                out[image_id] = img
    return out


def read(src: SourceConfig, path: str) -> Iterator[SourceBatch]:
    if not src.image_data:
        raise ValueError(f"source {src.name}: visual_genome needs image_data (image_data.json)")
    images = load_image_data(src.image_data)
    holdout = load_holdout_ids(src.holdout_ids)
    try:
        data = json.loads(paths.read_text(path))
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        yield file_reject(src.name, path, RS.REASON_MALFORMED_FILE, f"not valid JSON: {err}")
        return
    if not isinstance(data, list):
        yield file_reject(src.name, path, RS.REASON_MALFORMED_FILE,
                          "expected a JSON list of {id, regions} (region_descriptions.json)")
        return
    names = (S.SOURCE_ID, S.URL, S.CAPTION, S.WIDTH, S.HEIGHT, S.REGION_X, S.REGION_Y, S.REGION_W, S.REGION_H)
    cols: dict[str, list] = {c: [] for c in names}
    bad: list[tuple[str, str, str | None, str | None]] = []
    for i, entry in enumerate(data):
        regions = entry.get("regions") if isinstance(entry, dict) else None
        if not isinstance(regions, list):
            bad.append((make_key(src.name, f"entry{i}"), RS.REASON_MALFORMED_ROW, None, None))
            continue
        for j, reg in enumerate(regions):
            reg = reg if isinstance(reg, dict) else {}
            rid = as_int(reg.get("region_id", reg.get("id")))
            sid = str(rid) if rid is not None else f"entry{i}-{j}"
            image_id = as_int(reg.get("image_id", entry.get("id")))
            if src.mode == "image" and image_id is not None:
                sid = f"{image_id}{IMAGE_SEP}{sid}"  # join_regions groups by this prefix
            phrase, ok = as_text(reg.get("phrase"))
            img = images.get(image_id) if image_id is not None else None
            url = _url(src, img, image_id) if img else None
            reason = None
            if not ok or img is None:
                reason = RS.REASON_MALFORMED_ROW
            elif as_int(img.get("coco_id")) in holdout:
                reason = RS.REASON_TEST_SPLIT
            if reason:
                bad.append((make_key(src.name, sid), reason, url, phrase))
                continue
            cols[S.SOURCE_ID].append(sid)
            cols[S.URL].append(url)
            cols[S.CAPTION].append(phrase)
            cols[S.WIDTH].append(as_int(img.get("width")))
            cols[S.HEIGHT].append(as_int(img.get("height")))
            cols[S.REGION_X].append(as_int(reg.get("x")))
            cols[S.REGION_Y].append(as_int(reg.get("y")))
            cols[S.REGION_W].append(as_int(reg.get("width")))
            cols[S.REGION_H].append(as_int(reg.get("height")))
        # Cut tables only between entries, so one image's regions stay in one table.
        if len(cols[S.SOURCE_ID]) >= CHUNK:
            yield batch(rows_table(src.name, cols))
            cols = {c: [] for c in names}
    rejects = None
    if bad:
        keys, reasons, urls, caps = (list(x) for x in zip(*bad, strict=True))
        rejects = rejects_for(src.name, keys, reasons, urls, caps)
    yield batch(rows_table(src.name, cols) if cols[S.SOURCE_ID] else None, rejects)


def _url(src: SourceConfig, img: dict, image_id: int) -> str | None:
    if src.image_root:
        return "file://" + src.image_root.rstrip("/") + f"/{image_id}.jpg"
    url = img.get("url")
    return url if isinstance(url, str) else None


# ------------------------------------------------------------- mode: image
def _phrase(text: str | None) -> str:
    """A translated phrase ready to join: trailing punctuation and spaces dropped."""
    return (text or "").strip().rstrip(_TRAILING).strip()


def join_phrases(phrases: list[tuple[str, str | None, int]], max_chars: int) -> tuple[str, str | None]:
    """(caption, caption_orig) of one image from (phrase, english, area) items.

    Phrases are deduplicated and taken largest region first (ties in input
    order), each added only if the joined caption still fits ``max_chars``;
    a phrase too long to fit is skipped, a later smaller one may still fit.
    If not even one fits, the largest phrase alone is returned, and the length
    rule rejects the pair with its usual reason.
    """
    order = sorted(range(len(phrases)), key=lambda i: (-phrases[i][2], i))
    seen: set[str] = set()
    parts: list[str] = []
    origs: list[str] = []
    first: tuple[str, str | None] | None = None
    length = 0
    for i in order:
        text, orig, _ = phrases[i]
        text = _phrase(text)
        if not text or text in seen:
            continue
        seen.add(text)
        first = first or (text, orig)
        extra = len(text) + (len(JOIN_SEP) if parts else 0)
        if length + extra > max_chars:
            continue
        parts.append(text)
        length += extra
        if orig:
            origs.append(_phrase(orig))
    if not parts:
        return first if first else ("", None)
    return JOIN_SEP.join(parts), (ORIG_SEP.join(origs) or None)


def join_regions(table: pa.Table, max_chars: int) -> tuple[pa.Table, pa.Table]:
    """Region rows of image-mode sources -> one pair per image, plus ``merged_region`` rejects.

    The pair's source id is the image id (key ``{source}_{image_id}``), with the
    image's URL and size and no box; the largest region's row is the one the
    pair replaces, every other region row becomes a reject. Rows are grouped by
    the ``{image_id}-`` prefix of their source id, so the input order does not
    change the result. Only the columns the join reads go to Python; the
    pairs and rejects are taken from the table by index.
    """
    if table.num_rows == 0:
        return table, S.empty_reject_table()
    table = table.combine_chunks()
    sids = table.column(S.SOURCE_ID).to_pylist()
    sources = table.column(S.SOURCE).to_pylist()
    captions = table.column(S.CAPTION).to_pylist()
    origs = table.column(S.CAPTION_ORIG).to_pylist()
    ws = table.column(S.REGION_W).to_pylist()
    hs = table.column(S.REGION_H).to_pylist()
    groups: dict[tuple[str, str], list[int]] = {}
    for i, sid in enumerate(sids):
        groups.setdefault((sources[i], (sid or "").split(IMAGE_SEP, 1)[0]), []).append(i)
    pair_rows: list[int] = []
    pair_ids: list[str] = []
    pair_caps: list[str] = []
    pair_origs: list[str | None] = []
    merged: list[int] = []
    for (_, image_id), idx in sorted(groups.items()):
        idx.sort(key=lambda i: sids[i])
        areas = [max(ws[i] or 0, 0) * max(hs[i] or 0, 0) for i in idx]
        caption, orig = join_phrases(
            [(captions[i], origs[i], a) for i, a in zip(idx, areas, strict=True)], max_chars)
        largest = min(range(len(idx)), key=lambda j: (-areas[j], j))
        pair_rows.append(idx[largest])
        pair_ids.append(image_id)
        pair_caps.append(caption)
        pair_origs.append(orig)
        merged.extend(i for j, i in enumerate(idx) if j != largest)
    pairs = table.take(pa.array(pair_rows, pa.int64()))
    pair_sources = pairs.column(S.SOURCE).to_pylist()
    replace = {
        S.SOURCE_ID: pa.array(pair_ids, pa.string()),
        S.KEY: pa.array([make_key(src, i) for src, i in zip(pair_sources, pair_ids, strict=True)], pa.string()),
        S.CAPTION: pa.array(pair_caps, pa.string()),
        S.CAPTION_ORIG: pa.array(pair_origs, pa.string()),
    }
    for col in (S.REGION_X, S.REGION_Y, S.REGION_W, S.REGION_H):
        replace[col] = pa.nulls(len(pair_rows), table.schema.field(col).type)
    for col, values in replace.items():
        pairs = pairs.set_column(pairs.schema.get_field_index(col), table.schema.field(col), values)
    gone = table.take(pa.array(merged, pa.int64()))
    rejects = RS.reject_table(
        gone.column(S.KEY), gone.column(S.SOURCE), gone.column(S.URL),
        pc.utf8_slice_codeunits(gone.column(S.CAPTION), 0, 2000),
        [RS.REASON_MERGED_REGION] * gone.num_rows, stage="metadata")
    return pairs, rejects


def join_image_sources(table: pa.Table, sources: frozenset[str], max_chars: int) -> tuple[pa.Table, pa.Table]:
    """Apply :func:`join_regions` to the rows of ``sources``; other rows pass through."""
    if table.num_rows == 0 or not sources:
        return table, S.empty_reject_table()
    mine = pc.is_in(table.column(S.SOURCE), pa.array(sorted(sources), pa.string()))
    mine = pc.fill_null(mine, False)
    if not pc.any(mine).as_py():
        return table, S.empty_reject_table()
    joined, rejects = join_regions(table.filter(mine), max_chars)
    rest = table.filter(pc.invert(mine))
    return pa.concat_tables([rest, joined]), rejects
