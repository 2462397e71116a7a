"""LAION-5B multilingual (laion2B-multi / relaion2B-multi) parquet files.

Only the columns zhclip keeps are read, and the LANGUAGE predicate is pushed
into the parquet scan, so the ~95% of rows in other languages are never
decoded; they are counted from the file footer and reported as ``not_zh``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
from zhclip.pipeline.core import reasons as RS
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.core.config import SourceConfig
from zhclip.pipeline.core.errors import ConfigError
from zhclip.pipeline.sources.common import (
    PartialRead,
    SourceBatch,
    batch,
    file_stem,
    group_failure,
    iter_row_groups,
    parquet_row_groups,
    rejects_for,
    rows_table,
    split_invalid,
    text_column,
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
NUMERIC = (S.WIDTH, S.HEIGHT, S.SIMILARITY, S.PUNSAFE, S.PWATERMARK)
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


def _check_types(path: str, schema: pa.Schema, wanted: dict[str, str], lang_col: str | None) -> None:
    """Refuse, naming the column, a file whose numeric or LANGUAGE columns hold the wrong kind.

    A LANGUAGE of ints or a WIDTH of lists cannot be read row by row; the
    whole file becomes a ``malformed_file`` reject with every row counted.
    """
    for theirs, ours in wanted.items():
        typ = schema.field(theirs).type
        if ours in NUMERIC and not (pa.types.is_integer(typ) or pa.types.is_floating(typ)
                                    or pa.types.is_null(typ) or pa.types.is_decimal(typ)):
            raise ValueError(f"{path}: column {theirs} holds {typ}, expected numbers")
    if lang_col is not None:
        typ = schema.field(lang_col).type
        if pa.types.is_dictionary(typ):
            typ = typ.value_type
        if not (pa.types.is_string(typ) or pa.types.is_large_string(typ)):
            raise ValueError(f"{path}: column {lang_col} holds {typ}, expected language codes (strings)")


def read(src: SourceConfig, path: str) -> Iterator[SourceBatch]:
    groups, total_rows = parquet_row_groups(path)
    try:
        yield from _read_groups(src, path, groups)
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure: count the unread rows exactly
        raise PartialRead(err, total_rows) from err


def _read_groups(src: SourceConfig, path: str, groups) -> Iterator[SourceBatch]:
    names = groups[0].physical_schema.names if groups else []
    schema = groups[0].physical_schema if groups else pa.schema([])
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
            # a config that asks for a rule the data cannot answer: stop, do not reject rows
            raise ConfigError(f"{path}: source {src.name} sets {key} but the file has no {col} column; "
                              f"unset {key} for this source or point it at files with {col}")
    _check_types(path, schema, wanted, lang_col if languages else None)
    matched = 0
    stem = file_stem(path)
    for rb, dropped, error in iter_row_groups(groups, list(wanted), flt, src.batch_rows):
        if error:
            yield group_failure(src.name, path, dropped, error)
            continue
        if rb is None:
            if dropped:
                yield batch(**{RS.REASON_NOT_ZH: dropped})
            continue
        if rb.num_rows == 0:
            continue
        cols = {ours: rb.column(theirs) for theirs, ours in wanted.items()}
        if S.SOURCE_ID not in cols:
            cols[S.SOURCE_ID] = pa.array([f"{stem}-{matched + i}" for i in range(rb.num_rows)])
        matched += rb.num_rows
        for b in text_batches(src.name, cols):
            rows, rejects = safety_split(b.rows, src.max_punsafe, src.max_pwatermark)
            if rejects is not None:
                b = batch(rows, pa.concat_tables([b.rejects, rejects]))
            yield b


def text_batches(source: str, cols: dict[str, pa.Array]) -> Iterator[SourceBatch]:
    """Columns of one batch -> a stage-1 batch; values that are not text become rejects.

    A caption that is not text is ``invalid_caption``; a URL that is not text
    ``invalid_url`` (the caption reason wins when both are bad).
    """
    bad: dict[str, pa.Array] = {}
    for c in (S.URL, S.CAPTION, S.LICENSE, S.NSFW, S.SOURCE_ID):
        if c in cols:
            cols[c], bad[c] = text_column(cols[c])
    for c in (S.WIDTH, S.HEIGHT):
        if c in cols:
            cols[c] = pc.cast(cols[c], pa.int64(), safe=False)
    table = rows_table(source, cols)
    rejects = []
    for c, reason in ((S.CAPTION, RS.REASON_INVALID_CAPTION), (S.URL, RS.REASON_INVALID_URL)):
        if c in bad:
            mask = bad[c]
            table, rej = split_invalid(table, mask, reason)
            rejects.append(rej)
            if c == S.CAPTION and S.URL in bad:
                bad[S.URL] = bad[S.URL].filter(pc.invert(mask))
    yield batch(table, pa.concat_tables(rejects) if rejects else None)


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
