"""A stage-1 URL shard as stage 2 reads it: rows to fetch, rows rejected up front, a digest.

The digest of the input keys is what a shard's commit mark (its stats file)
records, so a rerun can tell finished outputs from outputs of other input.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from zhclip.pipeline.core import reasons as RS
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.download.columns import RENAMED_ON_INPUT
from zhclip.pipeline.download.img2dataset_glue import column_list

STAGE = "download"



class BadUrlShard(ValueError):
    """A URL shard that cannot be read; the message names the file."""


@dataclass
class ShardInput:
    """A metadata shard split into rows to download and rows rejected up front."""

    table: pa.Table  # METADATA_SCHEMA, unique non-null keys
    rejects: pa.Table  # REJECT_SCHEMA
    input_rows: int
    digest: str


def read_shard_input(metadata_path: str) -> ShardInput:
    """Read a stage-1 shard; rows without a key or with a repeated key become rejects.

    Stage 1 promises unique keys, but a key written twice here would be a
    duplicate sample in the tar, so it is checked rather than trusted.
    """
    try:
        with fsspec.open(metadata_path, "rb") as f:
            table = S.conform(pq.read_table(f), S.METADATA_SCHEMA)
    except (OSError, pa.ArrowException) as err:
        raise BadUrlShard(
            f"URL shard {metadata_path} cannot be read ({err}); rerun `zhclip metadata` "
            "to rewrite it"
        ) from None
    keys = table.column(S.KEY).to_pylist()
    seen: set[str] = set()
    keep, drop, reasons = [], [], []
    for i, key in enumerate(keys):
        if key is None or key == "":
            drop.append(i)
            reasons.append(RS.REASON_MALFORMED_ROW)
        elif key in seen:
            drop.append(i)
            reasons.append(RS.REASON_DUPLICATE_KEY)
        else:
            seen.add(key)
            keep.append(i)
    dropped = table.take(pa.array(drop, pa.int64()))
    rejects = RS.reject_table(
        dropped.column(S.KEY).to_pylist(),
        dropped.column(S.SOURCE).to_pylist(),
        dropped.column(S.URL).to_pylist(),
        dropped.column(S.CAPTION).to_pylist(),
        reasons,
        STAGE,
    )
    kept = table.take(pa.array(keep, pa.int64())) if drop else table
    digest = hashlib.sha256()
    for key in sorted(seen):
        digest.update(key.encode("utf-8") + b"\n")
    digest.update(f"rows={table.num_rows}".encode())
    return ShardInput(kept, rejects, table.num_rows, digest.hexdigest())


def write_img2dataset_input(table: pa.Table, path: str) -> None:
    """The Arrow IPC file img2dataset's Downloader reads, with its column names."""
    renamed = table.rename_columns([RENAMED_ON_INPUT.get(n, n) for n in table.column_names])
    selected = renamed.select(column_list())
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, selected.schema) as writer:
        writer.write_table(selected)
