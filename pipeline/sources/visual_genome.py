"""Visual Genome region descriptions: one row per region phrase, with its box.

Images come from image_data.json; an image whose coco_id is a held-out COCO
test image is removed (``test_split``), since VG and COCO share ~50k images.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

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
