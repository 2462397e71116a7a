"""Wukong CSV files (wukong_100m_{0..255}.csv, header ``url,caption``).

Broken lines (wrong field count) and bytes that are not UTF-8 become rejects
with their line, so one bad line costs one row, not the file.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
from zhclip.pipeline.core import reasons as RS
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.core.config import SourceConfig
from zhclip.pipeline.sources.common import (
    SourceBatch,
    batch,
    file_stem,
    iter_csv,
    make_key,
    rejects_for,
    rows_table,
)

REASON_INVALID_UTF8 = "invalid_utf8"


def read_csv_source(
    src: SourceConfig, path: str, url_col: str, caption_col: str, delimiter: str = ",",
    extra: dict[str, str] | None = None,
) -> Iterator[SourceBatch]:
    """Shared by wukong and generic CSV/TSV sources. ``extra`` maps ours -> theirs."""
    stem = file_stem(path)
    extra = extra or {}
    wanted = list(dict.fromkeys([url_col, caption_col, *extra.values()]))
    for chunk, broken in iter_csv(path, wanted, delimiter=delimiter):
        if broken:
            keys = [make_key(src.name, f"{stem}-L{line}") for line, _ in broken]
            yield batch(rejects=rejects_for(src.name, keys, RS.REASON_MALFORMED_ROW,
                                            captions=[text for _, text in broken]))
        if chunk is None:
            continue
        n = len(chunk.columns[url_col])
        ids_col = extra.get("id")
        if ids_col:
            ids = chunk.columns[ids_col]
        else:
            ids = pa.array([f"{stem}-{chunk.first_row + i}" for i in range(n)], pa.string())
        cols = {S.URL: chunk.columns[url_col], S.CAPTION: chunk.columns[caption_col], S.SOURCE_ID: ids}
        for ours, theirs in extra.items():
            if ours == "id":
                continue
            cols[ours] = chunk.columns[theirs]
        table = rows_table(src.name, cols) if not _needs_cast(cols) else _cast_table(src.name, cols)
        if chunk.invalid_utf8:
            bad = pa.array(chunk.invalid_utf8, pa.int64())
            keys = table.column(S.KEY).take(bad).to_pylist()
            yield batch(rejects=rejects_for(src.name, keys, REASON_INVALID_UTF8))
            bad_set = set(chunk.invalid_utf8)
            mask = pa.array([i not in bad_set for i in range(n)])
            table = table.filter(mask)
        yield batch(table)


def _needs_cast(cols: dict[str, pa.Array]) -> bool:
    return any(c in cols for c in (S.SIMILARITY, S.WIDTH, S.HEIGHT))


def _cast_table(source: str, cols: dict[str, pa.Array]) -> pa.Table:
    """Numeric columns from CSV text; unparseable numbers become null, not errors."""
    import pyarrow.compute as pc

    out = dict(cols)
    for c, typ in ((S.SIMILARITY, pa.float64()), (S.WIDTH, pa.int64()), (S.HEIGHT, pa.int64())):
        if c in out:
            txt = pc.utf8_trim_whitespace(out[c])
            ok = pc.match_substring_regex(txt, r"^-?[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?$")
            cleaned = pc.if_else(pc.fill_null(ok, False), txt, pa.scalar(None, pa.string()))
            out[c] = pc.cast(pc.cast(cleaned, pa.float64()), typ, safe=False)
    return rows_table(source, out)


def read(src: SourceConfig, path: str) -> Iterator[SourceBatch]:
    yield from read_csv_source(src, path, "url", "caption")
