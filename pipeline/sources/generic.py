"""User-defined sources: parquet, CSV/TSV or JSON Lines with a column mapping.

``columns`` maps zhclip's names (url, caption, id, similarity, width, height,
license, nsfw) to the file's; url and caption default to themselves.
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
    PartialRead,
    SourceBatch,
    as_float,
    as_int,
    as_text,
    batch,
    file_stem,
    group_failure,
    iter_row_groups,
    make_key,
    parquet_row_groups,
    rejects_for,
    rows_table,
    split_invalid,
    text_column,
)
from zhclip.pipeline.sources.wukong import _cast_table, read_csv_source

OURS = {"url": S.URL, "caption": S.CAPTION, "id": S.SOURCE_ID, "similarity": S.SIMILARITY,
        "width": S.WIDTH, "height": S.HEIGHT, "license": S.LICENSE, "nsfw": S.NSFW}


def detect_format(src: SourceConfig, path: str) -> str:
    if src.format != "auto":
        return src.format
    name = path.lower().removesuffix(".gz")
    for ext, fmt in ((".parquet", "parquet"), (".csv", "csv"), (".tsv", "tsv"),
                     (".jsonl", "jsonl"), (".json", "jsonl"), (".ndjson", "jsonl")):
        if name.endswith(ext):
            return fmt
    raise ValueError(f"{path}: cannot tell the format from the name; set format: on source {src.name}")


def mapping(src: SourceConfig) -> dict[str, str]:
    m = {"url": "url", "caption": "caption"}
    m.update(src.columns)
    return m


def read(src: SourceConfig, path: str) -> Iterator[SourceBatch]:
    fmt = detect_format(src, path)
    m = mapping(src)
    if fmt in ("csv", "tsv"):
        extra = {k: v for k, v in m.items() if k not in ("url", "caption")}
        extra_ours = {OURS[k] if k != "id" else "id": v for k, v in extra.items()}
        yield from read_csv_source(src, path, m["url"], m["caption"],
                                   delimiter="\t" if fmt == "tsv" else ",", extra=extra_ours)
    elif fmt == "parquet":
        yield from _read_parquet(src, path, m)
    else:
        yield from _read_jsonl(src, path, m)


def _read_parquet(src: SourceConfig, path: str, m: dict[str, str]) -> Iterator[SourceBatch]:
    groups, total_rows = parquet_row_groups(path)
    try:
        yield from _parquet_batches(src, path, m, groups)
    except Exception as err:  # noqa: BLE001 - count the unread rows exactly
        raise PartialRead(err, total_rows) from err


def _parquet_batches(src: SourceConfig, path: str, m: dict[str, str], groups) -> Iterator[SourceBatch]:
    names = groups[0].physical_schema.names if groups else []
    missing = [v for k, v in m.items() if v not in names]
    if missing:
        raise ValueError(f"{path}: columns {missing} not found; has {names}")
    stem, seen = file_stem(path), 0
    for rb, unread, error in iter_row_groups(groups, list(dict.fromkeys(m.values())), None, src.batch_rows):
        if error:
            yield group_failure(src.name, path, unread, error)
            continue
        if rb is None or rb.num_rows == 0:
            continue
        cols = {}
        bad: dict[str, pa.Array] = {}
        for k, theirs in m.items():
            arr = rb.column(theirs)
            if k in ("url", "caption", "id", "license", "nsfw"):
                arr, bad[OURS[k]] = text_column(arr)
            cols[OURS[k]] = arr
        if S.SOURCE_ID not in cols:
            cols[S.SOURCE_ID] = pa.array([f"{stem}-{seen + i}" for i in range(rb.num_rows)])
        seen += rb.num_rows
        text_cols = {c: v for c, v in cols.items() if c not in (S.SIMILARITY, S.WIDTH, S.HEIGHT)}
        numeric = {c: pa.array([None if x is None else str(x) for x in v.to_pylist()], pa.string())
                   for c, v in cols.items() if c in (S.SIMILARITY, S.WIDTH, S.HEIGHT)}
        table = (_cast_table(src.name, {**text_cols, **numeric}) if numeric
                 else rows_table(src.name, text_cols))
        table, rej_caption = split_invalid(table, bad[S.CAPTION], RS.REASON_INVALID_CAPTION)
        url_bad = bad[S.URL].filter(pc.invert(bad[S.CAPTION]))
        table, rej_url = split_invalid(table, url_bad, RS.REASON_INVALID_URL)
        yield batch(table, pa.concat_tables([rej_caption, rej_url]))


def _read_jsonl(src: SourceConfig, path: str, m: dict[str, str]) -> Iterator[SourceBatch]:
    stem = file_stem(path)
    names = [S.SOURCE_ID, S.URL, S.CAPTION, S.SIMILARITY, S.WIDTH, S.HEIGHT, S.LICENSE, S.NSFW]
    cols: dict[str, list] = {c: [] for c in names}
    bad_keys, bad_caps = [], []
    with paths.open_input(path) as f:
        for lineno, raw in enumerate(f.read().split(b"\n"), 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
                if not isinstance(obj, dict):
                    raise ValueError("not an object")
            except (ValueError, RecursionError):  # RecursionError: a line nested 100k deep
                bad_keys.append(make_key(src.name, f"{stem}-L{lineno}"))
                bad_caps.append(raw[:2000].decode("utf-8", "replace"))
                continue
            sid = obj.get(m["id"]) if "id" in m else None
            url, ok_u = as_text(obj.get(m["url"]))
            cap, ok_c = as_text(obj.get(m["caption"]))
            sid = f"{stem}-L{lineno}" if sid is None else str(sid)
            if not (ok_u and ok_c):
                bad_keys.append(make_key(src.name, sid))
                bad_caps.append(raw[:2000].decode("utf-8", "replace"))
                continue
            cols[S.SOURCE_ID].append(sid)
            cols[S.URL].append(url)
            cols[S.CAPTION].append(cap)
            cols[S.SIMILARITY].append(as_float(obj.get(m["similarity"])) if "similarity" in m else None)
            cols[S.WIDTH].append(as_int(obj.get(m["width"])) if "width" in m else None)
            cols[S.HEIGHT].append(as_int(obj.get(m["height"])) if "height" in m else None)
            lic = obj.get(m["license"]) if "license" in m else None
            cols[S.LICENSE].append(None if lic is None else str(lic))
            nsfw = obj.get(m["nsfw"]) if "nsfw" in m else None
            cols[S.NSFW].append(None if nsfw is None else str(nsfw))
    rejects = rejects_for(src.name, bad_keys, RS.REASON_MALFORMED_ROW, captions=bad_caps) if bad_keys else None
    rows = rows_table(src.name, {k: pa.array(v, S.METADATA_SCHEMA.field(k).type) for k, v in cols.items()}) \
        if cols[S.SOURCE_ID] else None
    yield batch(rows, rejects)
