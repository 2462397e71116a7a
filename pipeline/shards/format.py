"""Reading and writing the shards stage 3 consumes and produces.

Final shards (OUT/dataset/{split}/): ``{split}-{shard:06d}.tar`` holding, per
sample, ``{key}.jpg``, ``{key}.txt`` (UTF-8 caption) and ``{key}.json`` (key,
source, url, caption_orig, score, width, height, sha256), a parquet sidecar
``{split}-{shard:06d}.parquet`` in pipeline.schema.DATASET_SCHEMA with the same
rows in the same order, and a webdataset ``sizes.json`` per split; beside the
split folders, ``manifest.json`` (shards, sample counts, sha256 and size of
every file by its path relative to OUT/dataset, config, package versions) and
a Hugging Face dataset card ``README.md`` (see pipeline.shards.card).

Datasets of the first layout (every shard flat in OUT/dataset) still read:
:func:`dataset_shards` is the one lister, and it finds shards in either place.

Bytes are a function of the samples alone (fixed member order, mtime, owner
and mode; JSON with sorted keys; parquet from the same pyarrow), so a rerun or a
retried Beam bundle rewrites identical files; each file appears under its final
name only when complete (temporary name, then rename).

Download shards (img2dataset's output) are read by :mod:`zhclip.pipeline.shards.downloads`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import tarfile
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from zhclip.pipeline.core import paths
from zhclip.pipeline.core import schema as S

log = logging.getLogger(__name__)

DATASET_DIR = "dataset"
DOWNLOADS_DIR = "downloads"
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "zhclip-shards/2"  # /2: one folder per split
SIZES_NAME = "sizes.json"  # webdataset's per-folder {tar name: samples}
SPLIT_TRAIN = "train"
SPLIT_VAL = "val"
SPLITS = (SPLIT_TRAIN, SPLIT_VAL)
SHARD_FILE_RE = re.compile(r"^(?P<split>[a-z]+)-(?P<index>\d{6})\.(?P<ext>tar|parquet)$")

# Tar header fields fixed so bytes do not depend on who wrote them, or when.
TAR_MTIME = 0
TAR_MODE = 0o644
# JSON member fields, in DATASET_SCHEMA order; the caption is the .txt member.
JSON_FIELDS = [c for c in S.DATASET_COLUMNS if c != S.CAPTION]

# Stage 2 (pipeline.download_shard) swaps our key in for img2dataset's own in
# the parquet ``key`` column and the json member, and names tar members
# member_stem(key); plain img2dataset output uses its numeric key for all three.
I2D_KEY = S.KEY
I2D_STATUS = S.STATUS
I2D_SUCCESS = S.STATUS_SUCCESS
I2D_CAPTION = "caption"
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
UNKNOWN_SOURCE = "unknown"


# --- names ---------------------------------------------------------------------------


def shard_stem(split: str, index: int) -> str:
    return f"{split}-{index:06d}"


def member_stem(key: str) -> str:
    """Tar member base name for ``key``.

    webdataset splits a member name at the first dot of its basename and treats
    slashes as folders; stage-1 keys contain neither, others are %-escaped so
    every key still maps to exactly one sample.
    """
    return key.replace("%", "%25").replace(".", "%2E").replace("/", "%2F")


def key_from_member_stem(stem: str) -> str:
    return stem.replace("%2F", "/").replace("%2E", ".").replace("%25", "%")


def _unit_hash(text: str, salt: str) -> float:
    digest = hashlib.sha256(f"{salt}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_for_key(key: str, val_fraction: float) -> str:
    """Deterministic train/val assignment: a key stays in its split across runs and resizes."""
    return SPLIT_VAL if _unit_hash(key, "split") < val_fraction else SPLIT_TRAIN


def order_key(key: str) -> str:
    """Position of a sample in the final shards: a hash, so sources mix within a shard."""
    return hashlib.sha1(key.encode("utf-8")).hexdigest()


# --- final shard samples ----------------------------------------------------------------


@dataclass
class ShardSample:
    """One sample of a final shard: image bytes, caption, and DATASET_SCHEMA metadata."""

    key: str
    image: bytes
    caption: str
    meta: dict[str, Any]

    def record(self) -> dict[str, Any]:
        """The sample's row in DATASET_SCHEMA."""
        row = {c: self.meta.get(c) for c in S.DATASET_COLUMNS}
        row[S.KEY] = self.key
        row[S.CAPTION] = self.caption
        return row


def sample_json_bytes(sample: ShardSample) -> bytes:
    row = sample.record()
    return json.dumps({c: row[c] for c in JSON_FIELDS}, ensure_ascii=False, sort_keys=True).encode(
        "utf-8"
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


# --- atomic writes with checksums ----------------------------------------------------------


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


# --- manifest ---------------------------------------------------------------------------------


def package_versions() -> dict[str, str]:
    """Versions of what shaped the bytes and the scores, for the manifest."""
    import platform
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("zhclip", "apache-beam", "img2dataset", "pyarrow", "pillow", "webdataset",
                 "torch", "transformers", "open_clip_torch", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def build_manifest(shards: Iterable[ShardInfo | dict[str, Any]], config: dict[str, Any] | None,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Manifest dict; shards sorted by (split, index). No timestamps, so reruns match bytes."""
    rows = [s.to_json() if isinstance(s, ShardInfo) else dict(s) for s in shards]
    rows.sort(key=lambda r: (r["split"], r["index"]))
    splits: dict[str, dict[str, int]] = {}
    for r in rows:
        sp = splits.setdefault(r["split"], {"shards": 0, "samples": 0})
        sp["shards"] += 1
        sp["samples"] += r["samples"]
    manifest = {
        "format": MANIFEST_FORMAT,
        "layout": {
            "tar": "{split}/{split}-{index:06d}.tar",
            "sizes": f"{{split}}/{SIZES_NAME}",
            "members": [S.MEMBER_IMAGE, S.MEMBER_TEXT, S.MEMBER_JSON],
            "json_fields": JSON_FIELDS,
            "parquet_columns": list(S.DATASET_COLUMNS),
        },
        "total_samples": sum(r["samples"] for r in rows),
        "splits": splits,
        "shards": rows,
        "config": config,
        "versions": package_versions(),
    }
    manifest.update(extra or {})
    return manifest


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def write_manifest(folder: str, manifest: dict[str, Any]) -> None:
    paths.write_bytes_atomic(paths.join(folder, MANIFEST_NAME), manifest_bytes(manifest))


def write_dataset_files(folder: str, manifest: dict[str, Any]) -> None:
    """Everything beside the shards: per-split sizes.json, the dataset card, then manifest.json.

    The manifest goes last, so a folder with a manifest is a finished folder.
    """
    from zhclip.pipeline.shards import card

    write_sizes(folder, manifest)
    card.write_card(folder, manifest)
    write_manifest(folder, manifest)


def finish_dataset(folder: str, shards: Iterable[ShardInfo | dict[str, Any]],
                   config: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[str]]:
    """Manifest of ``shards``; stale shard files removed; sizes, card and manifest written.

    Returns (manifest, names of the removed stale files).
    """
    manifest = build_manifest(shards, config)
    keep = {name for s in manifest["shards"] for name in s["files"]}
    stale = remove_stale_shards(folder, keep)
    write_dataset_files(folder, manifest)
    return manifest, stale


def read_manifest(folder: str) -> dict[str, Any]:
    uri = paths.join(folder, MANIFEST_NAME)
    if not paths.exists(uri):
        raise FileNotFoundError(f"{uri} not found (is {folder} a zhclip dataset folder?)")
    return json.loads(paths.read_text(uri))


def sizes_by_split(manifest: dict[str, Any]) -> dict[str, dict[str, int]]:
    """webdataset ``sizes.json`` contents per split: {tar file name: samples}, in index order."""
    out: dict[str, dict[str, int]] = {}
    for shard in manifest["shards"]:
        out.setdefault(shard["split"], {})[f"{shard['name']}.tar"] = shard["samples"]
    return out


def write_sizes(folder: str, manifest: dict[str, Any]) -> list[str]:
    """Write ``{split}/sizes.json`` for every split of ``manifest``; returns their relative names.

    open_clip's trainer (and webdataset's own tooling) read it to count the
    samples of a shard list, so ``--train-num-samples`` is not needed.
    """
    written = []
    for split, sizes in sorted(sizes_by_split(manifest).items()):
        data = (json.dumps(sizes, indent=2) + "\n").encode("utf-8")
        paths.write_bytes_atomic(paths.join(folder, split, SIZES_NAME), data)
        written.append(f"{split}/{SIZES_NAME}")
    return written


def shard_files_on_disk(folder: str) -> list[str]:
    """Shard-named files (and temporaries) flat in ``folder`` and in its split folders."""
    out = []
    for sub in (folder, *(paths.join(folder, sp) for sp in SPLITS)):
        out.extend(u for u in paths.list_files(sub)
                   if SHARD_FILE_RE.match(u.rpartition("/")[2])
                   or u.rpartition("/")[2].startswith(".tmp-"))
    return out


def _relative(folder: str, uri: str) -> str:
    return uri[len(folder.rstrip("/")) + 1:] if uri.startswith(folder.rstrip("/") + "/") else uri


def remove_stale_shards(folder: str, keep: set[str]) -> list[str]:
    """Delete shard files of an earlier run that this run did not write; returns their names.

    ``keep`` holds names relative to ``folder`` (``train/train-000000.tar``);
    flat files of the first layout are stale once a new run rewrote the folder.
    """
    removed = []
    for uri in shard_files_on_disk(folder):
        name = _relative(folder, uri)
        if name not in keep:
            paths.remove(uri)
            removed.append(name)
    return removed


def file_sha256(uri: str) -> FileInfo:
    sha, size = hashlib.sha256(), 0
    with paths.open_input(uri) as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
            size += len(chunk)
    return FileInfo(uri.rpartition("/")[2], sha.hexdigest(), size)


def verify_dataset(folder: str, deep: bool = True) -> list[str]:
    """Problems found in a dataset folder; an empty list means it matches its manifest.

    Checks every listed file's size and sha256, that no shard file is unlisted,
    and (``deep``) that each tar and its sidecar hold the manifest's sample count.
    """
    problems: list[str] = []
    manifest = read_manifest(folder)
    listed: set[str] = set()
    for shard in manifest["shards"]:
        for name, want in shard["files"].items():
            listed.add(name)
            uri = paths.join(folder, name)
            if not paths.exists(uri):
                problems.append(f"{name}: missing")
                continue
            got = file_sha256(uri)
            if got.bytes != want["bytes"] or got.sha256 != want["sha256"]:
                problems.append(f"{name}: checksum mismatch (sha256 {got.sha256[:12]}..., "
                                f"manifest {want['sha256'][:12]}...)")
        if deep:
            tar_uri, pq_uri = _entry_file(folder, shard, "tar"), _entry_file(folder, shard, "parquet")
            if paths.exists(tar_uri) and paths.exists(pq_uri):
                n_tar = sum(1 for _ in iter_shard(tar_uri))
                n_pq = read_shard_table(pq_uri).num_rows
                if not n_tar == n_pq == shard["samples"]:
                    problems.append(f"{shard['name']}: {n_tar} samples in tar, {n_pq} in parquet, "
                                    f"{shard['samples']} in manifest")
    for uri in shard_files_on_disk(folder):
        name = _relative(folder, uri)
        if SHARD_FILE_RE.match(name.rpartition("/")[2]) and name not in listed:
            problems.append(f"{name}: not in the manifest")
    return problems


# --- final shard readers -----------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetShard:
    """One final shard, wherever the layout put it; ``samples`` is None without a manifest."""

    name: str
    split: str
    index: int
    tar: str
    parquet: str
    samples: int | None = None


def _entry_file(folder: str, entry: dict[str, Any], ext: str) -> str:
    """Path of one file of a manifest entry: the listed name (either layout), else the flat name."""
    for name in entry.get("files", {}):
        if name.endswith(f".{ext}"):
            return paths.join(folder, name)
    return paths.join(folder, f"{entry['name']}.{ext}")


def scan_dataset_shards(folder: str) -> list[DatasetShard]:
    """Shards found on disk, in split folders (current layout) or flat (first layout)."""
    found: dict[str, dict[str, Any]] = {}
    for uri in shard_files_on_disk(folder):
        m = SHARD_FILE_RE.match(uri.rpartition("/")[2])
        if not m:
            continue
        stem = f"{m['split']}-{m['index']}"
        entry = found.setdefault(stem, {"split": m["split"], "index": int(m["index"])})
        entry[m["ext"]] = uri  # split folders are listed after the flat files: they win
    out = []
    for stem, e in found.items():
        base = (e.get("tar") or e.get("parquet")).rpartition(".")[0]
        out.append(DatasetShard(stem, e["split"], e["index"], e.get("tar", f"{base}.tar"),
                                e.get("parquet", f"{base}.parquet")))
    return out


def dataset_shards(folder: str, split: str | None = None) -> list[DatasetShard]:
    """The shards of a dataset folder in (split, index) order: the one lister of the package.

    From manifest.json when present (so a half written or stale file that
    happens to sit in the folder is never read), else from the files on disk.
    Both layouts read: ``{split}/{split}-NNNNNN.tar`` and the first, flat
    ``{split}-NNNNNN.tar``. Training, inspection and the loaders all use it.
    """
    if paths.exists(paths.join(folder, MANIFEST_NAME)):
        shards = [DatasetShard(s["name"], s["split"], int(s["index"]), _entry_file(folder, s, "tar"),
                               _entry_file(folder, s, "parquet"), s.get("samples"))
                  for s in read_manifest(folder)["shards"]]
    else:
        shards = scan_dataset_shards(folder)
    shards.sort(key=lambda s: (s.split, s.index))
    return [s for s in shards if split is None or s.split == split]


def list_dataset_shards(folder: str, split: str | None = None, ext: str = "tar") -> list[str]:
    """Paths of the ``ext`` files (tar or parquet) of :func:`dataset_shards`."""
    return [s.tar if ext == "tar" else s.parquet for s in dataset_shards(folder, split)]


def group_tar_members(stream: Any) -> Iterator[tuple[str, dict[str, bytes], str | None]]:
    """Yield (stem, {ext: bytes}, error) per consecutive sample of a tar stream.

    A member whose extension the current group already has starts a new
    group: two samples written back to back under one key stay two samples
    (a duplicate key to report), never one silently merged.
    A tar cut short ends the iteration with the error of the last group, so
    the caller can tell "complete" from "truncated" without losing what was read.
    """
    current: str | None = None
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                base = info.name.rpartition("/")[2]
                stem, _, ext = base.partition(".")
                f = tar.extractfile(info)
                data = f.read() if f is not None else b""
                if current is not None and (stem != current or ext.lower() in members):
                    yield current, members, None
                    members = {}
                current = stem
                members[ext.lower()] = data
    except (tarfile.TarError, EOFError, OSError) as err:
        if current is not None:
            yield current, members, f"{type(err).__name__}: {err}"
        else:
            yield "", {}, f"{type(err).__name__}: {err}"
        return
    if current is not None:
        yield current, members, None


def iter_shard(tar_uri: str) -> Iterator[ShardSample]:
    """Samples of a final shard, in file order (key from the json member)."""
    with paths.open_input(tar_uri) as f:
        for stem, members, error in group_tar_members(f):
            if error:
                raise ValueError(f"{tar_uri}: damaged tar ({error})")
            meta = json.loads(members.get(S.MEMBER_JSON, b"{}").decode("utf-8"))
            if not isinstance(meta, dict):
                raise ValueError(f"{tar_uri}: sample {stem}: json member is not an object")
            key = meta.get(S.KEY) or key_from_member_stem(stem)
            caption = members.get(S.MEMBER_TEXT, b"").decode("utf-8")
            meta[S.CAPTION] = caption
            yield ShardSample(key, members.get(S.MEMBER_IMAGE, b""), caption, meta)


def read_shard_table(parquet_uri: str) -> pa.Table:
    fs, path = paths.filesystem_for(parquet_uri)
    return pq.read_table(path, filesystem=fs)


def read_dataset_table(folder: str, split: str | None = None) -> pa.Table:
    """All sidecars of a dataset folder as one table (metadata only, no pixels)."""
    tables = [read_shard_table(u) for u in list_dataset_shards(folder, split, ext="parquet")]
    return pa.concat_tables(tables) if tables else S.DATASET_SCHEMA.empty_table()
