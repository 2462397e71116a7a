"""LAION-5B multilingual (laion2B-multi / relaion2B-multi) parquet files.

Only the columns zhclip keeps are read, and the LANGUAGE predicate is pushed
into the parquet scan, so the ~95% of rows in other languages are never
decoded; they are counted from the file footer and reported as ``not_zh``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from zhclip.pipeline.core import paths
from zhclip.pipeline.core import reasons as RS
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.core.config import SourceConfig
from zhclip.pipeline.sources.common import (
    STREAMING_SCAN,
    SourceBatch,
    batch,
    file_stem,
    rejects_for,
    rows_table,
)

# LAION column -> ours. Variants add punsafe / pwatermark / md5.
COLUMN_MAP = {
    "URL": S.URL,
    "TEXT": S.CAPTION,
    "SAMPLE_ID": S.SOURCE_ID,
    "HEIGHT": S.HEIGHT,
    "WIDTH": S.WIDTH,
    "LICENSE": S.LICENSE,
    "NSFW": S.NSFW,
    "similarity": S.SIMILARITY,
    "punsafe": S.PUNSAFE,
    "pwatermark": S.PWATERMARK,
}
LANGUAGE = "LANGUAGE"
DEFAULT_LANGUAGES = ["zh"]


def _find(names: list[str], wanted: str) -> str | None:
    """Column names vary in case across LAION releases (url vs URL)."""
    for n in names:
        if n == wanted:
            return n
    for n in names:
        if n.lower() == wanted.lower():
            return n
    return None


def read(src: SourceConfig, path: str) -> Iterator[SourceBatch]:
    fs, inner = paths.filesystem_for(path)
    dataset = ds.dataset(inner, filesystem=fs, format="parquet")
    names = dataset.schema.names
    url_col, text_col = _find(names, "URL"), _find(names, "TEXT")
    if url_col is None or text_col is None:
        raise ValueError(f"{path}: not a LAION parquet file (needs URL and TEXT columns; has {names})")
    languages = DEFAULT_LANGUAGES if src.languages is None else src.languages
    lang_col = _find(names, LANGUAGE)
    flt = None
    if languages:
        if lang_col is None:
            raise ValueError(
                f"{path}: no LANGUAGE column to keep {languages}; "
                "set languages: [] on this source to keep every row"
            )
        flt = pc.field(lang_col).isin(pa.array(languages, pa.string()))
    wanted = {}
    for theirs, ours in COLUMN_MAP.items():
        found = _find(names, theirs)
        if found is not None:
            wanted[found] = ours
    for key, col in (("max_punsafe", S.PUNSAFE), ("max_pwatermark", S.PWATERMARK)):
        if getattr(src, key) is not None and col not in wanted.values():
            raise ValueError(f"{path}: source {src.name} sets {key} but the file has no {col} column")
    total_rows = dataset.count_rows()
    matched = 0
    stem = file_stem(path)
    for rb in dataset.to_batches(columns=list(wanted), filter=flt, batch_size=src.batch_rows,
                                  batch_readahead=1, fragment_readahead=1,
                                  fragment_scan_options=STREAMING_SCAN):
        if rb.num_rows == 0:
            continue
        cols = {ours: rb.column(theirs) for theirs, ours in wanted.items()}
        if S.SOURCE_ID not in cols:
            cols[S.SOURCE_ID] = pa.array([f"{stem}-{matched + i}" for i in range(rb.num_rows)])
        for c in (S.URL, S.CAPTION, S.LICENSE, S.NSFW, S.SOURCE_ID):
            if c in cols and cols[c].type != pa.string():
                cols[c] = _to_text(cols[c])
        for c in (S.WIDTH, S.HEIGHT):
            if c in cols:
                cols[c] = pc.cast(cols[c], pa.int64(), safe=False)
        matched += rb.num_rows
        rows, rejects = safety_split(rows_table(src.name, cols), src.max_punsafe, src.max_pwatermark)
        yield batch(rows, rejects)
    yield batch(**{RS.REASON_NOT_ZH: total_rows - matched})


def safety_reasons(table: pa.Table, max_punsafe: float | None,
                   max_pwatermark: float | None) -> pa.Array | None:
    """``unsafe`` / ``watermark`` per row above a threshold, null elsewhere; None when both are off.

    The paper does not use LAION's safety columns, so both are off by default.
    A row whose value is missing is kept: it cannot be shown to be above.
    """
    checks = []
    for limit, col, reason in ((max_punsafe, S.PUNSAFE, RS.REASON_UNSAFE),
                               (max_pwatermark, S.PWATERMARK, RS.REASON_WATERMARK)):
        if limit is not None:
            above = pc.fill_null(pc.greater(table.column(col), limit), False)
            checks.append(pc.if_else(above, pa.scalar(reason), pa.scalar(None, pa.string())))
    if not checks:
        return None
    return pc.coalesce(*checks) if len(checks) > 1 else checks[0]


def safety_split(table: pa.Table, max_punsafe: float | None,
                 max_pwatermark: float | None) -> tuple[pa.Table, pa.Table | None]:
    """(rows kept, reject rows) after the optional punsafe / pwatermark thresholds."""
    reasons = safety_reasons(table, max_punsafe, max_pwatermark)
    if reasons is None:
        return table, None
    hit = pc.is_valid(reasons)
    if not pc.any(hit).as_py():
        return table, None
    bad = table.filter(hit)
    rejects = rejects_for(
        table.column(S.SOURCE)[0].as_py(), bad.column(S.KEY).to_pylist(), reasons.filter(hit).to_pylist(),
        bad.column(S.URL).to_pylist(), bad.column(S.CAPTION).to_pylist())
    return table.filter(pc.invert(hit)), rejects


def _to_text(arr: pa.Array) -> pa.Array:
    try:
        return arr.cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.array([None if v is None else str(v) for v in arr.to_pylist()], pa.string())
