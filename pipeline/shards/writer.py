"""Writing final shards: one tar + parquet pair at a time, atomically, with checksums.

Each file is written under a temporary name and renamed when complete, hashing the bytes on
their way out, so the manifest's sha256 costs no second read and a retried Beam bundle never
leaves a half shard. Bytes are a function of the samples alone (fixed member order, mtime,
owner and mode), so two attempts rename identical files onto one name.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from zhclip.pipeline.core import paths
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.shards.format import (
    SPLIT_TRAIN,
    SPLITS,
    TAR_MODE,
    TAR_MTIME,
    ShardSample,
    member_stem,
    sample_json_bytes,
    shard_stem,
)


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = TAR_MTIME
    info.mode = TAR_MODE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def write_tar(stream: Any, samples: Iterable[ShardSample]) -> int:
    """Write ``samples`` as a webdataset tar to a binary stream; returns the sample count."""
    n = 0
    with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for sample in samples:
            stem = member_stem(sample.key)
            _tar_member(tar, f"{stem}.{S.MEMBER_IMAGE}", sample.image)
            _tar_member(tar, f"{stem}.{S.MEMBER_TEXT}", sample.caption.encode("utf-8"))
            _tar_member(tar, f"{stem}.{S.MEMBER_JSON}", sample_json_bytes(sample))
            n += 1
    return n


def samples_table(samples: Sequence[ShardSample]) -> pa.Table:
    rows = [s.record() for s in samples]
    return pa.Table.from_pylist(rows, schema=S.DATASET_SCHEMA)


class _HashingStream:
    """Write-through wrapper that hashes and counts what passes."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        self.inner.write(data)
        return len(data)

    def flush(self) -> None:
        pass


def _tmp_path(path: str, attempt: str) -> str:
    folder, _, name = path.rpartition("/")
    return f"{folder}/.tmp-{attempt}-{name}"


@dataclass
class FileInfo:
    name: str
    sha256: str
    bytes: int


def _write_atomic(uri: str, write: Any, attempt: str) -> FileInfo:
    fs, path = paths.filesystem_for(uri)
    fs.create_dir(path.rpartition("/")[0], recursive=True)
    tmp = _tmp_path(path, attempt)
    try:
        with fs.open_output_stream(tmp) as raw:
            stream = _HashingStream(raw)
            write(stream)
        fs.move(tmp, path)
    except BaseException:
        if fs.get_file_info(tmp).type != pafs.FileType.NotFound:
            fs.delete_file(tmp)
        raise
    return FileInfo(path.rpartition("/")[2], stream.sha.hexdigest(), stream.size)


@dataclass
class ShardInfo:
    """What the manifest records about one written shard."""

    split: str
    index: int
    samples: int
    files: list[FileInfo] = field(default_factory=list)

    @property
    def name(self) -> str:
        return shard_stem(self.split, self.index)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "split": self.split,
            "index": self.index,
            "samples": self.samples,
            "files": {f.name: {"sha256": f.sha256, "bytes": f.bytes} for f in self.files},
        }


def write_shard(folder: str, split: str, index: int, samples: Sequence[ShardSample]) -> ShardInfo:
    """Write one tar + parquet pair atomically; same samples -> same bytes.

    Each attempt writes under its own temporary name, so two attempts of the
    same shard racing each other (a Beam retry) never share a half file; both
    rename identical bytes onto the final names.
    """
    stem = shard_stem(split, index)
    attempt = uuid.uuid4().hex[:12]
    split_folder = paths.join(folder, split)
    tar_info = _write_atomic(
        paths.join(split_folder, f"{stem}.tar"), lambda st: write_tar(st, samples), attempt
    )

    def write_parquet(stream: Any) -> None:
        buffer = pa.BufferOutputStream()  # sidecars are small; pyarrow wants a real stream
        pq.write_table(samples_table(samples), buffer, compression="zstd")
        stream.write(buffer.getvalue().to_pybytes())

    pq_info = _write_atomic(paths.join(split_folder, f"{stem}.parquet"), write_parquet, attempt)
    for info in (tar_info, pq_info):  # manifest names are relative to the dataset folder
        info.name = f"{split}/{info.name}"
    return ShardInfo(split, index, len(samples), [tar_info, pq_info])


class ShardWriter:
    """Sequential writer: ``write(sample)`` fills ``{split}/{split}-{index:06d}`` shards of fixed size.

    The Beam job writes whole shards with :func:`write_shard`; this class serves
    code that produces samples in order (tools, tests, small conversions); pass its
    ``written`` to :func:`finish_dataset` for the manifest, sizes.json and card.
    """

    def __init__(self, folder: str, split: str = SPLIT_TRAIN, samples_per_shard: int = 10_000,
                 start_index: int = 0) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.folder = folder
        self.split = split
        self.samples_per_shard = samples_per_shard
        self.index = start_index
        self.buffer: list[ShardSample] = []
        self.written: list[ShardInfo] = []

    def write(self, sample: ShardSample) -> None:
        self.buffer.append(sample)
        if len(self.buffer) >= self.samples_per_shard:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            self.written.append(write_shard(self.folder, self.split, self.index, self.buffer))
            self.index += 1
            self.buffer = []

    def close(self) -> list[ShardInfo]:
        self.flush()
        return self.written

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()


def file_sha256(uri: str) -> FileInfo:
    sha, size = hashlib.sha256(), 0
    with paths.open_input(uri) as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
            size += len(chunk)
    return FileInfo(uri.rpartition("/")[2], sha.hexdigest(), size)
