"""The completion marker of stage 1's URL shards: which shards a finished run wrote.

A killed ``zhclip metadata`` leaves some shards written, some half written
under ``.tmp-*`` names, and others not written at all; a folder listing cannot
tell that apart from a finished run. So stage 1 writes OUT/metadata/_COMMITTED.json
last, after every shard is in place, naming the shards and their row counts,
and removes it first when it starts again. Stage 2 reads exactly the shards
the marker names, and refuses a folder whose run started but never committed.

A folder with no marker and no sign of a stage-1 run (URL shards written by
hand, or by a tool other than zhclip) is read as it is, skipping dot files.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

import fsspec

MARKER_NAME = "_COMMITTED.json"
STARTED_NAME = "_STARTED.json"
SHARD_SUFFIX = ".parquet"


class UncommittedShards(RuntimeError):
    """Stage 1 started on this folder and did not finish: its shards are not complete."""


@dataclass(frozen=True)
class CommittedShards:
    """The URL shards a finished stage-1 run wrote, by file name, with their row counts."""

    folder: str
    rows: dict[str, int]

    @property
    def paths(self) -> list[str]:
        return [_join(self.folder, name) for name in sorted(self.rows)]


# fsspec, not pyarrow: stage 2 runs on any fsspec filesystem (gs://, memory:// in tests).
def _join(folder: str, name: str) -> str:
    return f"{folder.rstrip('/')}/{name}"


def _exists(uri: str) -> bool:
    fs, path = fsspec.core.url_to_fs(uri)
    return fs.exists(path)


def _remove(uri: str) -> None:
    fs, path = fsspec.core.url_to_fs(uri)
    if fs.exists(path):
        fs.rm(path)


def _write_json_atomic(uri: str, data: dict) -> None:
    fs, path = fsspec.core.url_to_fs(uri)
    folder, _, name = path.rpartition("/")
    fs.makedirs(folder, exist_ok=True)
    tmp = f"{folder}/.tmp-{uuid.uuid4().hex[:12]}-{name}"
    with fs.open(tmp, "wb") as f:
        f.write(json.dumps(data, indent=2, sort_keys=True).encode("utf-8"))
    fs.mv(tmp, path)


def mark_started(folder: str) -> None:
    """Called before a run writes anything: withdraw the old marker, leave a started one."""
    _write_json_atomic(_join(folder, STARTED_NAME), {"started": time.time()})
    _remove(_join(folder, MARKER_NAME))


def shard_files_in(folder: str) -> list[str]:
    """The URL shard files in ``folder`` (no dot files, so no ``.tmp-*`` leftovers)."""
    fs, path = fsspec.core.url_to_fs(folder)
    if not fs.isdir(path):
        return []
    names = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
    return [_join(folder, n) for n in names if n.endswith(SHARD_SUFFIX) and not n.startswith(".")]


def mark_committed(folder: str, rows: dict[str, int]) -> None:
    """Called last: record the shards (file name -> rows) a run finished writing."""
    _write_json_atomic(
        _join(folder, MARKER_NAME),
        {"finished": time.time(), "shards": dict(sorted(rows.items()))},
    )
    _remove(_join(folder, STARTED_NAME))


def committed_shards(folder: str) -> CommittedShards | None:
    """The marker's shards; None for a hand-made folder (no marker, no started run).

    Raises :class:`UncommittedShards` when a run started and did not commit, or
    when a shard the marker names is gone.
    """
    marker = _join(folder, MARKER_NAME)
    if not _exists(marker):
        if _exists(_join(folder, STARTED_NAME)):
            raise UncommittedShards(
                f"{folder}: `zhclip metadata` started here and did not finish (no {MARKER_NAME}); "
                "its URL shards may be partial. Run `zhclip metadata` again to completion."
            )
        return None
    try:
        with fsspec.open(marker, "r", encoding="utf-8") as f:
            rows = {str(k): int(v) for k, v in json.load(f)["shards"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise UncommittedShards(f"{marker} is damaged ({err}); run `zhclip metadata` again") from None
    missing = [name for name in sorted(rows) if not _exists(_join(folder, name))]
    if missing:
        raise UncommittedShards(
            f"{folder}: {len(missing)} shard(s) named in {MARKER_NAME} are missing "
            f"({missing[:3]}); run `zhclip metadata` again"
        )
    return CommittedShards(folder, rows)
