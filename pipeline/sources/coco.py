"""MSCOCO captions: captions_{train,val}2014.json, and COCO-CN style TSV.

One row per caption. Captions of held-out images (Karpathy test, COCO-CN test)
are rejected as ``test_split`` so evaluation images never enter pretraining.
COCO-CN files (``COCO_val2014_000000391895#0<TAB>句子``) carry human Chinese
captions and need no translation.
"""

from __future__ import annotations

import json
import re
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
    local_image_url,
    make_key,
    rejects_for,
    rows_table,
)
from zhclip.pipeline.sources.holdout import load_holdout_ids

COCO_IMAGE_URL = "http://images.cocodataset.org/{split}/{file_name}"
_COCO_CN_ID = re.compile(r"^COCO_(train|val|test)(\d{4})_(\d+)#(\d+)$")


def image_url(src: SourceConfig, file_name: str, coco_url: str | None, split: str | None) -> str | None:
    if src.image_root:
        return local_image_url(src.image_root, file_name)
    if coco_url:
        return coco_url
    if split:
        return COCO_IMAGE_URL.format(split=split, file_name=file_name)
    return None


def read(src: SourceConfig, path: str) -> Iterator[SourceBatch]:
    holdout = load_holdout_ids(src.holdout_ids)
    if path.endswith((".txt", ".tsv")):
        yield from _read_coco_cn(src, path, holdout)
        return
    try:
        data = json.loads(paths.read_text(path))
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        yield file_reject(src.name, path, RS.REASON_MALFORMED_FILE, f"not valid JSON: {err}")
        return
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        yield file_reject(src.name, path, RS.REASON_MALFORMED_FILE,
                          "expected a COCO captions file with 'images' and 'annotations'")
        return
    images = {}
    for img in data.get("images") or []:
        if isinstance(img, dict) and as_int(img.get("id")) is not None:
            images[as_int(img["id"])] = img
    yield from _rows(src, data["annotations"], images, holdout)


def _rows(src: SourceConfig, annotations: list, images: dict, holdout: frozenset[int]) -> Iterator[SourceBatch]:
    cols: dict[str, list] = {c: [] for c in (S.SOURCE_ID, S.URL, S.CAPTION, S.WIDTH, S.HEIGHT, S.LICENSE)}
    bad_keys, bad_reasons, bad_urls, bad_caps = [], [], [], []
    for i, ann in enumerate(annotations):
        ann = ann if isinstance(ann, dict) else {}
        ann_id = ann.get("id")
        sid = str(ann_id) if isinstance(ann_id, int | str) and not isinstance(ann_id, bool) else f"row{i}"
        image_id = as_int(ann.get("image_id"))
        caption, ok = as_text(ann.get("caption"))
        img = images.get(image_id) if image_id is not None else None
        url = image_url(src, img.get("file_name", ""), img.get("coco_url"), None) if img else None
        reason = None
        if not ok or image_id is None or img is None:
            reason = RS.REASON_MALFORMED_ROW
        elif url is None and src.image_root:
            reason = RS.REASON_INVALID_URL  # file_name leaves image_root
        elif image_id in holdout:
            reason = RS.REASON_TEST_SPLIT
        if reason:
            bad_keys.append(make_key(src.name, sid))
            bad_reasons.append(reason)
            bad_urls.append(url)
            bad_caps.append(caption)
            continue
        cols[S.SOURCE_ID].append(sid)
        cols[S.URL].append(url)
        cols[S.CAPTION].append(caption)
        cols[S.WIDTH].append(as_int(img.get("width")))
        cols[S.HEIGHT].append(as_int(img.get("height")))
        lic = img.get("license")
        cols[S.LICENSE].append(None if lic is None else str(lic))
    rejects = rejects_for(src.name, bad_keys, bad_reasons, bad_urls, bad_caps) if bad_keys else None
    rows = rows_table(src.name, cols) if cols[S.SOURCE_ID] else None
    yield batch(rows, rejects)


def _read_coco_cn(src: SourceConfig, path: str, holdout: frozenset[int]) -> Iterator[SourceBatch]:
    annotations, images = [], {}
    for lineno, line in enumerate(paths.read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        name, sep, sentence = line.partition("\t")
        m = _COCO_CN_ID.match(name.strip())
        if not sep or not m:
            annotations.append({"id": f"L{lineno}", "caption": line})  # no image -> malformed
            continue
        split = f"{m.group(1)}{m.group(2)}"
        image_id = int(m.group(3))
        file_name = f"COCO_{split}_{m.group(3)}.jpg"
        images.setdefault(image_id, {"file_name": file_name,
                                     "coco_url": image_url(src, file_name, None, split)})
        annotations.append({"id": f"{split}_{image_id}_{m.group(4)}", "image_id": image_id,
                            "caption": sentence})
    yield from _rows(src, annotations, images, holdout)


__all__ = ["read", "rejects_for"]
