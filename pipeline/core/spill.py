"""Spill files: Arrow IPC parts that let a Beam shuffle move names instead of bytes.

Beam's DirectRunner holds a shuffle's whole input in memory and copies every
element through its data plane, so moving rows or image bytes through a
GroupByKey makes memory and time grow with the data. A step writes its tables
here and emits the path; the step after the shuffle reads them back. Names are
fresh per attempt: only the paths of the attempt Beam commits travel on, and
the driver removes the folder when the job is done.

A bucket's parts are read back in hash groups of at most ``group_rows`` rows
(see read_groups), so a step after the shuffle holds one group, not one
bucket: with a fixed bucket count, a bucket grows with the input, and memory
with it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
from zhclip.pipeline.core import paths

TMP_DIR = "_tmp"
HASH_COLUMN = "__hash"  # a part's rows carry the 64-bit hash that chose their bucket


def spill_folder(out: str, stage: str, kind: str) -> str:
    return paths.join(out, TMP_DIR, stage, kind)


def write_part(folder: str, table: pa.Table, subfolder: str = "") -> str:
    """Write ``table`` as an Arrow IPC file under a fresh name; return its path.

    The name carries the row count (``{uuid}-{rows}.arrow``), so a bucket's
    size is known from its part names without opening one.
    """
    parts = [subfolder] if subfolder else []
    path = paths.join(folder, *parts, f"{uuid.uuid4().hex}-{table.num_rows}.arrow")
    fs, inner = paths.filesystem_for(path)
    fs.create_dir(inner.rpartition("/")[0], recursive=True)
    with fs.open_output_stream(inner) as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return path


def read_part(path: str) -> pa.Table:
    fs, inner = paths.filesystem_for(path)
    if isinstance(fs, pafs.LocalFileSystem):
        return pa.ipc.open_file(pa.memory_map(inner)).read_all()  # zero-copy on local disk
    with fs.open_input_file(inner) as f:
        return pa.ipc.open_file(f).read_all()


def part_rows(path: str) -> int:
    """Rows of a part, from its name (read from the file for a name without a count)."""
    stem = path.rsplit("/", 1)[-1].removesuffix(".arrow")
    count = stem.rpartition("-")[2]
    return int(count) if "-" in stem and count.isdigit() else read_part(path).num_rows


def _is_local(path: str) -> bool:
    return isinstance(paths.filesystem_for(path)[0], pafs.LocalFileSystem)


def read_parts(part_paths) -> pa.Table:
    return pa.concat_tables([read_part(p) for p in sorted(part_paths)]).combine_chunks()


def with_hash(table: pa.Table, hashes: np.ndarray, column: str = HASH_COLUMN) -> pa.Table:
    """Attach the bucket hash to the rows, so read_groups can split the bucket without rehashing."""
    return table.append_column(column, pa.array(hashes, pa.uint64()))


def group_count(rows: int, group_rows: int) -> int:
    return max(1, -(-rows // group_rows))


def read_groups(part_paths: Sequence[str], n_buckets: int, group_rows: int,
                column: str = HASH_COLUMN, drop: bool = True) -> Iterator[pa.Table]:
    """Yield one bucket's rows in groups of about ``group_rows``; rows of one hash share a group.

    The bucket was chosen by ``hash % n_buckets``; the group is
    ``(hash // n_buckets) % groups``, independent of it. On local disk each
    group re-reads the memory-mapped parts and copies out only its rows; on
    a remote store (gs://), where a re-read is a download, one pass first
    splits every part into per-group parts beside it. Either way the resident
    set is one group, whatever the bucket's size. Groups come in a fixed
    order and each holds the same rows whatever the part order, so a step
    that sorts within a group writes the same bytes on every run. The hash
    column is dropped unless ``drop`` is False.
    """
    ordered = sorted(part_paths)
    groups = group_count(sum(part_rows(p) for p in ordered), group_rows)
    if groups == 1:
        table = read_parts(ordered) if ordered else None
        if table is not None:
            yield table.drop_columns([column]) if drop and column in table.column_names else table
        return

    def group_of(part: pa.Table) -> np.ndarray:
        return (part.column(column).to_numpy() // np.uint64(n_buckets)) % np.uint64(groups)

    if ordered and not _is_local(ordered[0]):
        by_group = _split_into_groups(ordered, groups, group_of)
        for g in range(groups):
            if by_group[g]:
                table = read_parts(by_group[g])
                yield table.drop_columns([column]) if drop else table
        return
    for g in range(groups):
        pieces = []
        for p in ordered:
            part = read_part(p)
            idx = np.flatnonzero(group_of(part) == np.uint64(g))
            if len(idx):
                pieces.append(part.take(pa.array(idx)))
            del part  # unmaps the part before the next one is touched
        if pieces:
            table = pa.concat_tables(pieces).combine_chunks()
            yield table.drop_columns([column]) if drop else table


def _split_into_groups(part_paths: list[str], groups: int, group_of) -> list[list[str]]:
    """Each part read once and written back as one part per group (under g{group}/ beside it)."""
    by_group: list[list[str]] = [[] for _ in range(groups)]
    for p in part_paths:
        part = read_part(p)
        ids = group_of(part).astype(np.int64)
        order = np.argsort(ids, kind="stable")
        bounds = np.searchsorted(ids[order], np.arange(groups + 1))
        folder = p.rsplit("/", 1)[0]
        for g in range(groups):
            if bounds[g + 1] > bounds[g]:
                piece = part.take(pa.array(order[bounds[g]:bounds[g + 1]]))
                by_group[g].append(write_part(folder, piece, f"g{g:05d}"))
    return by_group


def remove_spill(out: str, stage: str) -> None:
    fs, inner = paths.filesystem_for(paths.join(out, TMP_DIR, stage))
    if fs.get_file_info(inner).type != pafs.FileType.NotFound:
        fs.delete_dir(inner)
