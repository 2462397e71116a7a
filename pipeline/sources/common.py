"""What every source reader shares: batches, keys, value coercion, robust CSV.

A reader turns one input file into ``SourceBatch`` objects: rows in the stage-1
schema, rejects for what could not be read, and counts of rows skipped without
being materialised (LAION's non-zh rows, read only as a count). Together they
account for every input row.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
from zhclip.pipeline.core import paths
from zhclip.pipeline.core import reasons as RS
from zhclip.pipeline.core import schema as S

_SAFE_ID = re.compile(r"^[A-Za-z0-9_\-]{1,80}$")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9_\-]")
MAX_REJECT_TEXT = 2000  # rejects keep a prefix of huge captions, not 1 MB of text
# Parquet scans stream one row group at a time. pyarrow's default (pre_buffer)
# reads every wanted column chunk of the whole file first: a laion2B-multi file
# holds ~18M rows, so memory would follow the file size, not the batch size.
STREAMING_SCAN = pads.ParquetFragmentScanOptions(pre_buffer=False)


@dataclass
class SourceBatch:
    rows: pa.Table
    rejects: pa.Table
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def rows_in(self) -> int:
        return self.rows.num_rows + self.rejects.num_rows + sum(self.skipped.values())


def file_stem(path: str) -> str:
    name = PurePosixPath(path.replace("\\", "/")).name
    return name.split(".", 1)[0] or name


def safe_id(source_id: str) -> str:
    """A source id usable inside a webdataset key (no dots, slashes or spaces).

    Ids that are already safe stay readable; anything else is replaced by a
    hash, prefixed so it cannot collide with a readable id of the same text.
    """
    if _SAFE_ID.match(source_id):
        return source_id
    return "h" + hashlib.sha1(source_id.encode("utf-8", "surrogatepass")).hexdigest()[:20] + "x"


def make_key(source: str, source_id: str) -> str:
    return f"{source}_{safe_id(source_id)}"


def make_keys(source: str, source_ids: pa.Array) -> pa.Array:
    """Vectorised :func:`make_key`: safe ids are joined in Arrow, the rest hashed in Python."""
    if isinstance(source_ids, pa.ChunkedArray):
        source_ids = source_ids.combine_chunks()
    ids = source_ids.cast(pa.string()).fill_null("")
    safe = pc.fill_null(pc.match_substring_regex(ids, _SAFE_ID.pattern), False)
    keys = pc.binary_join_element_wise(pa.scalar(source), ids, "_")
    unsafe = pc.invert(safe)
    if pc.any(unsafe).as_py():
        fixed = pa.array([make_key(source, s) for s in ids.filter(unsafe).to_pylist()], pa.string())
        keys = pc.replace_with_mask(keys, unsafe, fixed)
    return keys


def clip_text(value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else repr(value)
    return text[:MAX_REJECT_TEXT]


def as_text(value: Any) -> tuple[str | None, bool]:
    """Coerce a JSON value to caption/url text. Returns (text, ok).

    Numbers become their decimal text (then fail the length or URL rule in the
    open); lists, dicts and booleans are malformed.
    """
    if value is None or isinstance(value, str):
        return value, True
    if isinstance(value, bool):
        return None, False
    if isinstance(value, int | float):
        return str(value), True
    return None, False


def as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(value) if isinstance(value, str) else None
    except ValueError:
        return None


def rows_table(source: str, columns: dict[str, list | pa.Array]) -> pa.Table:
    """Build a stage-1 table for ``source`` from partial columns (others null).

    ``columns`` must hold SOURCE_ID; KEY is derived from it.
    """
    ids = columns[S.SOURCE_ID]
    ids = ids if isinstance(ids, pa.Array) else pa.array(ids, pa.string())
    n = len(ids)
    cols: dict[str, pa.Array] = {}
    for name, values in columns.items():
        cols[name] = values if isinstance(values, pa.Array) else pa.array(values)
    cols[S.SOURCE_ID] = ids.cast(pa.string())
    cols[S.KEY] = make_keys(source, cols[S.SOURCE_ID])
    cols[S.SOURCE] = pa.array([source] * n, pa.string())
    return S.conform(pa.table(cols), S.METADATA_SCHEMA)


def rejects_for(
    source: str, keys: list[str], reason: str | list[str], urls=None, captions=None
) -> pa.Table:
    n = len(keys)
    reasons = reason if isinstance(reason, list) else [reason] * n
    return RS.reject_table(
        keys,
        [source] * n,
        [clip_text(u) for u in (urls or [None] * n)],
        [clip_text(c) for c in (captions or [None] * n)],
        reasons,
        stage="metadata",
    )


def batch(rows: pa.Table | None = None, rejects: pa.Table | None = None, **skipped: int) -> SourceBatch:
    return SourceBatch(
        rows if rows is not None else S.empty_metadata_table(),
        rejects if rejects is not None else S.empty_reject_table(),
        {k: v for k, v in skipped.items() if v},
    )


def file_reject(source: str, path: str, reason: str, detail: str) -> SourceBatch:
    """A whole file that cannot be read: one reject row naming the file and why."""
    return batch(rejects=rejects_for(source, [make_key(source, f"file:{path}")], reason,
                                     urls=[path], captions=[detail]))


def decode_utf8_column(arr: pa.Array) -> tuple[pa.Array, list[int]]:
    """Binary column -> string column, plus the indices whose bytes are not UTF-8."""
    try:
        return arr.cast(pa.string()), []
    except (pa.ArrowInvalid, UnicodeDecodeError):
        pass
    out: list[str | None] = []
    bad: list[int] = []
    for i, v in enumerate(arr.to_pylist()):
        if v is None:
            out.append(None)
            continue
        try:
            out.append(v.decode("utf-8"))
        except UnicodeDecodeError:
            out.append(None)
            bad.append(i)
    return pa.array(out, pa.string()), bad


@dataclass
class CsvChunk:
    """One block of a CSV file: decoded columns and the broken lines seen so far."""

    columns: dict[str, pa.Array]
    first_row: int
    invalid_utf8: list[int]


def iter_csv(
    path: str, wanted: list[str], delimiter: str = ",", block_size: int = 16 << 20
) -> Iterator[tuple[CsvChunk | None, list[tuple[int | None, str]]]]:
    """Stream a CSV with a header, tolerating broken lines.

    Quoted commas and newlines parse; a line with the wrong number of fields is
    reported as (line number, text) instead of stopping the file; bytes that are
    not UTF-8 are reported per row. Yields (chunk, broken lines since last yield).
    Raises ValueError if a wanted column is missing from the header.
    """
    broken: list[tuple[int | None, str]] = []

    def on_invalid(row) -> str:
        broken.append((row.number, row.text))
        return "skip"

    with paths.open_input(path) as f:
        reader = pacsv.open_csv(
            f,
            read_options=pacsv.ReadOptions(block_size=block_size),
            parse_options=pacsv.ParseOptions(
                delimiter=delimiter, newlines_in_values=True, invalid_row_handler=on_invalid
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.binary() for c in wanted},
                include_columns=wanted,
                strings_can_be_null=False,
            ),
        )
        names = reader.schema.names
        missing = [c for c in wanted if c not in names]
        if missing:
            raise ValueError(f"{path}: CSV header lacks column(s) {missing}; header is {names}")
        row = 0
        for rb in reader:
            cols: dict[str, pa.Array] = {}
            bad: set[int] = set()
            for c in wanted:
                arr, bad_idx = decode_utf8_column(rb.column(c))
                cols[c] = arr
                bad.update(bad_idx)
            yield CsvChunk(cols, row, sorted(bad)), broken[:]
            broken.clear()
            row += rb.num_rows
        if broken:
            yield None, broken[:]

