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
    unknown: int = 0
    """Files that stopped partway at a point where the rest could not be counted."""

    @property
    def rows_in(self) -> int:
        return self.rows.num_rows + self.rejects.num_rows + sum(self.skipped.values())


class PartialRead(Exception):
    """A file failed after the reader knew how many rows it holds.

    ``total_rows`` comes from the parquet footer: the caller subtracts the
    rows already accounted and rejects exactly the rest.
    """

    def __init__(self, cause: BaseException, total_rows: int):
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause
        self.total_rows = total_rows


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


def local_image_url(root: str, name: str) -> str | None:
    """``file://`` URL of ``name`` under ``root``, or None when it would leave the root.

    File names come from the annotation file, which is input like any other:
    ``../../etc/passwd``, an absolute path or a NUL byte must not reach a file
    outside the image folder.
    """
    if not isinstance(name, str) or not name or "\x00" in name or "\\" in name:
        return None
    parts = PurePosixPath(name).parts
    if name.startswith("/") or any(p in ("..", ".") for p in parts) or ":" in parts[0]:
        return None
    return "file://" + root.rstrip("/") + "/" + "/".join(parts)


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


def text_column(arr: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, pa.Array]:
    """Any Arrow column -> (string column, mask of values that are not text).

    Strings pass; UTF-8 bytes are decoded (a binary TEXT column is common in
    re-encoded dumps); numbers become their decimal text, as from JSON. Bytes
    that are not UTF-8, and structs, lists or maps, are not captions: their
    Python repr (``b'\\xff..'``, ``{'a': 1}``) must never be kept as one.
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    n = len(arr)
    typ = arr.type
    if pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_null(typ):
        return arr.cast(pa.string()), pa.array([False] * n)
    if pa.types.is_binary(typ) or pa.types.is_large_binary(typ) or pa.types.is_fixed_size_binary(typ):
        text, bad = decode_utf8_column(arr.cast(pa.binary()))
        mask = [False] * n
        for i in bad:
            mask[i] = True
        return text, pa.array(mask)
    if pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_decimal(typ):
        return arr.cast(pa.string()), pa.array([False] * n)
    if pa.types.is_dictionary(typ):
        return text_column(arr.dictionary_decode())
    # struct, list, map, bool, timestamps...: nothing a caption or URL can be.
    return pa.nulls(n, pa.string()), pc.is_valid(arr)


def split_invalid(table: pa.Table, bad: pa.Array, reason: str) -> tuple[pa.Table, pa.Table]:
    """Rows of a stage-1 table where ``bad`` holds -> reject rows with ``reason``; the rest kept."""
    if not pc.any(bad).as_py():
        return table, S.empty_reject_table()
    losers = table.filter(bad)
    rejects = rejects_for(losers.column(S.SOURCE)[0].as_py() if losers.num_rows else "?",
                          losers.column(S.KEY).to_pylist(), reason,
                          urls=losers.column(S.URL).to_pylist())
    return table.filter(pc.invert(bad)), rejects


def parquet_row_groups(path: str) -> tuple[list[pads.ParquetFileFragment], int]:
    """One fragment per row group of a parquet file, and the file's row count (footer only)."""
    fs, inner = paths.filesystem_for(path)
    dataset = pads.dataset(inner, filesystem=fs, format="parquet")
    groups = [g for frag in dataset.get_fragments() for g in frag.split_by_row_group()]
    total = sum(rg.num_rows for g in groups for rg in g.row_groups)
    return groups, total


def iter_row_groups(
    groups: list[pads.ParquetFileFragment], columns: list[str], filter_expr=None, batch_rows: int = 65536
) -> Iterator[tuple[pa.RecordBatch | None, int, str | None]]:
    """Stream row groups one at a time.

    Yields (batch, 0, None) per batch; after each group (None, n, None) with
    the n rows the filter dropped, or (None, n, error) with the n rows of a
    group that failed to decode and were not read. Scanning group by group
    means a corrupt group fails alone: the groups around it are still read,
    and every row is counted.
    """
    for index, group in enumerate(groups):
        size = sum(rg.num_rows for rg in group.row_groups)
        matched = 0
        try:
            for rb in group.to_batches(columns=columns, filter=filter_expr, batch_size=batch_rows,
                                       batch_readahead=1, fragment_scan_options=STREAMING_SCAN):
                matched += rb.num_rows
                yield rb, 0, None
        except (OSError, ValueError, pa.ArrowException) as err:
            yield None, size - matched, f"row group {index}: {type(err).__name__}: {str(err)[:300]}"
            continue
        yield None, size - matched, None


def group_failure(source: str, path: str, unread: int, error: str) -> SourceBatch:
    """The unread rows of a corrupt row group: one reject row naming it, the others counted."""
    if unread <= 0:
        return batch()
    failed = file_reject(source, path + "#" + error.split(":", 1)[0], RS.REASON_MALFORMED_FILE, error)
    if unread > 1:
        failed.skipped[RS.REASON_MALFORMED_FILE] = unread - 1
    return failed


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

