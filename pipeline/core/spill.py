"""Spill files: Arrow IPC parts that let a Beam shuffle move names instead of bytes.

Beam's DirectRunner holds a shuffle's whole input in memory and copies every
element through its data plane, so moving rows or image bytes through a
GroupByKey makes memory and time grow with the data. A step writes its tables
here and emits the path; the step after the shuffle reads them back. Names are
fresh per attempt: only the paths of the attempt Beam commits travel on, and
the driver removes the folder when the job is done.
"""

from __future__ import annotations

import uuid

import pyarrow as pa
import pyarrow.fs as pafs
from zhclip.pipeline.core import paths

TMP_DIR = "_tmp"


def spill_folder(out: str, stage: str, kind: str) -> str:
    return paths.join(out, TMP_DIR, stage, kind)


def write_part(folder: str, table: pa.Table, subfolder: str = "") -> str:
    """Write ``table`` as an Arrow IPC file under a fresh name; return its path."""
    parts = [subfolder] if subfolder else []
    path = paths.join(folder, *parts, f"{uuid.uuid4().hex}.arrow")
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


def read_parts(part_paths) -> pa.Table:
    return pa.concat_tables([read_part(p) for p in sorted(part_paths)]).combine_chunks()


def remove_spill(out: str, stage: str) -> None:
    fs, inner = paths.filesystem_for(paths.join(out, TMP_DIR, stage))
    if fs.get_file_info(inner).type != pafs.FileType.NotFound:
        fs.delete_dir(inner)
