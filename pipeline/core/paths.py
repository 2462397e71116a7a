"""Local, gs:// and hf:// paths behind one small interface.

pyarrow's filesystems cover local disk and GCS natively (and give the parquet
scanner predicate pushdown); hf:// goes through fsspec's HfFileSystem wrapped
for pyarrow. gs:// honours ``STORAGE_EMULATOR_HOST`` as Google's own clients do
(google-cloud-storage, gcsfs, Beam's GCSFileSystem): pyarrow's C++ client does
not read that variable, so without this it asked the real service for OAuth
credentials while the rest of a run talked to the emulator. Output is written under a temporary name and renamed, so a
retried Beam bundle never leaves a half file behind.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import uuid
from collections.abc import Iterable
from typing import IO

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

GLOB_CHARS = set("*?[")


def _is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def _strip_file_scheme(uri: str) -> str:
    return uri[len("file://") :] if uri.startswith("file://") else uri


# The variable Google's storage clients read to talk to a local emulator (JSON API).
EMULATOR_VARIABLE = "STORAGE_EMULATOR_HOST"


def gcs_filesystem() -> pafs.FileSystem:
    """pyarrow's GCS filesystem: the emulator when STORAGE_EMULATOR_HOST is set, else GCS.

    On GCS it finds credentials as Google's other clients do (Application Default
    Credentials: the metadata server on a Dataflow worker). An emulator needs
    none, and asking for some is what failed before.
    """
    emulator = os.environ.get(EMULATOR_VARIABLE, "")
    if not emulator:
        return pafs.GcsFileSystem()
    scheme, _, host = emulator.rpartition("://")
    return pafs.GcsFileSystem(
        anonymous=True, scheme=scheme or "http", endpoint_override=host.rstrip("/")
    )


def filesystem_for(uri: str) -> tuple[pafs.FileSystem, str]:
    """Return the pyarrow filesystem serving ``uri`` and the path inside it."""
    if uri.startswith(("gs://", "gcs://")):
        return gcs_filesystem(), uri.split("://", 1)[1]
    if uri.startswith("hf://"):
        from fsspec import filesystem
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        return PyFileSystem(FSSpecHandler(filesystem("hf"))), uri[len("hf://") :]
    if _is_remote(uri):
        try:
            fs, path = pafs.FileSystem.from_uri(uri)
        except pa.ArrowInvalid:
            # A scheme pyarrow has no native filesystem for (memory://, s3-compatible
            # stores through fsspec plugins, ...): serve it through fsspec.
            import fsspec
            from pyarrow.fs import FSSpecHandler, PyFileSystem

            ffs, path = fsspec.core.url_to_fs(uri)
            return PyFileSystem(FSSpecHandler(ffs)), path
        return fs, path
    return pafs.LocalFileSystem(), os.path.abspath(_strip_file_scheme(uri))


def _join(prefix: str, path: str) -> str:
    scheme = prefix.split("://", 1)[0] + "://" if "://" in prefix else ""
    return f"{scheme}{path}" if scheme else path


def expand_paths(patterns: Iterable[str]) -> list[str]:
    """Expand globs; raise FileNotFoundError naming the first pattern that matches nothing.

    Called on the driver before the pipeline starts, so a typo in a path fails
    in a second instead of after hours of work on the other sources.
    """
    out: list[str] = []
    for pattern in patterns:
        matches = _expand_one(pattern)
        if not matches:
            if pattern.startswith(("gs://", "gcs://")):
                check_bucket(pattern)  # a missing bucket says so, not "no input"
            raise FileNotFoundError(f"no input matches {pattern!r} (check the source's paths)")
        out.extend(matches)
    return out


def _expand_one(pattern: str) -> list[str]:
    if not _is_remote(pattern):
        local = _strip_file_scheme(pattern)
        if GLOB_CHARS & set(local):
            return sorted(p for p in glob.glob(local, recursive=True) if os.path.isfile(p))
        return [local] if os.path.isfile(local) else []
    fs, path = filesystem_for(pattern)
    if not GLOB_CHARS & set(path):
        info = fs.get_file_info(path)
        return [pattern] if info.type == pafs.FileType.File else []
    # Walk from the deepest folder without glob characters, then fnmatch.
    parts = path.split("/")
    base_parts = []
    for part in parts:
        if GLOB_CHARS & set(part):
            break
        base_parts.append(part)
    base = "/".join(base_parts)
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        return []  # object stores raise on listing a prefix that holds nothing
    selector = pafs.FileSelector(base, recursive="**" in path or len(base_parts) < len(parts) - 1)
    infos = fs.get_file_info(selector)
    hits = sorted(
        i.path for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatch(i.path, path)
    )
    return [_join(pattern, h) for h in hits]


def exists(uri: str) -> bool:
    fs, path = filesystem_for(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def open_input(uri: str) -> IO[bytes]:
    fs, path = filesystem_for(uri)
    return fs.open_input_file(path)


def read_text(uri: str) -> str:
    with open_input(uri) as f:
        return f.read().decode("utf-8")


def makedirs(uri: str) -> None:
    """Create a folder; on an object store, check the bucket exists instead of creating it.

    GCS has no folders, and a missing bucket is a setup mistake to report in one
    line (pyarrow would try to create it and fail on a missing project id).
    """
    fs, path = filesystem_for(uri)
    if isinstance(fs, pafs.GcsFileSystem):
        check_bucket(uri)
        return
    fs.create_dir(path, recursive=True)


def check_bucket(uri: str) -> None:
    """Raise FileNotFoundError naming the bucket when ``uri``'s bucket does not exist."""
    fs, path = filesystem_for(uri)
    bucket = path.split("/", 1)[0]
    if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
        scheme = uri.split("://", 1)[0]
        raise FileNotFoundError(
            f"{uri}: bucket {scheme}://{bucket} does not exist (create it, or fix the path)"
        )


def join(base: str, *names: str) -> str:
    return "/".join([base.rstrip("/"), *names])


def list_files(folder: str, suffix: str = "") -> list[str]:
    """Files directly inside ``folder`` ending with ``suffix``, sorted; [] if absent."""
    fs, path = filesystem_for(folder)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    names = sorted(i.base_name for i in infos if i.type == pafs.FileType.File)
    return [join(folder, n) for n in names if n.endswith(suffix)]


def remove(uri: str) -> None:
    fs, path = filesystem_for(uri)
    if fs.get_file_info(path).type == pafs.FileType.File:
        fs.delete_file(path)


def _tmp_name(uri: str) -> str:
    folder, _, name = uri.rpartition("/")
    return f"{folder}/.tmp-{uuid.uuid4().hex[:12]}-{name}"


def write_bytes_atomic(uri: str, data: bytes) -> None:
    fs, path = filesystem_for(uri)
    fs.create_dir(path.rpartition("/")[0], recursive=True)
    tmp = _tmp_name(path)
    try:
        with fs.open_output_stream(tmp) as out:
            out.write(data)
        fs.move(tmp, path)
    except BaseException:
        _remove_quietly(fs, tmp)  # a full disk must not leave half files behind
        raise


def write_parquet_atomic(
    table: pa.Table | Iterable[pa.Table], uri: str, schema: pa.Schema | None = None
) -> None:
    """Write ``table`` (or tables, one row group each) to ``uri`` under a temporary name, then rename.

    Parquet files written by the same pyarrow from the same tables are
    byte-identical, so a Beam retry that writes again changes nothing. An
    iterable is written as it comes, so it never has to fit in memory; its
    ``schema`` is needed when it may be empty.
    """
    fs, path = filesystem_for(uri)
    fs.create_dir(path.rpartition("/")[0], recursive=True)
    tmp = _tmp_name(path)
    try:
        if isinstance(table, pa.Table):
            pq.write_table(table, tmp, filesystem=fs, compression="zstd")
        else:
            _write_tables(table, tmp, fs, schema)
        fs.move(tmp, path)
    except BaseException:
        _remove_quietly(fs, tmp)
        raise


def _write_tables(tables: Iterable[pa.Table], path: str, fs, schema: pa.Schema | None) -> None:
    writer = None
    try:
        for t in tables:
            if writer is None:
                writer = pq.ParquetWriter(
                    path, schema or t.schema, filesystem=fs, compression="zstd"
                )
            writer.write_table(
                t.cast(writer.schema) if schema is not None else t,
                row_group_size=max(1, t.num_rows),
            )
        if writer is None:
            if schema is None:
                raise ValueError(f"{path}: no tables to write and no schema given")
            writer = pq.ParquetWriter(path, schema, filesystem=fs, compression="zstd")
    finally:
        if writer is not None:
            writer.close()


def _remove_quietly(fs, path: str) -> None:
    try:
        fs.delete_file(path)
    except (OSError, FileNotFoundError):
        pass
