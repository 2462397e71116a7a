"""The final shard format: names, samples, tar members, and reading a dataset folder.

Writing lives in :mod:`~zhclip.pipeline.shards.writer`, the manifest, sizes.json and card in
:mod:`~zhclip.pipeline.shards.manifest`, and the one verifier in
:mod:`~zhclip.pipeline.shards.verify`.

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
import json
import logging
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
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


def read_manifest(folder: str) -> dict[str, Any]:
    uri = paths.join(folder, MANIFEST_NAME)
    if not paths.exists(uri):
        raise FileNotFoundError(f"{uri} not found (is {folder} a zhclip dataset folder?)")
    return json.loads(paths.read_text(uri))


def shard_files_on_disk(folder: str) -> list[str]:
    """Shard-named files (and temporaries) flat in ``folder`` and in its split folders."""
    out = []
    for sub in (folder, *(paths.join(folder, sp) for sp in SPLITS)):
        out.extend(u for u in paths.list_files(sub)
                   if SHARD_FILE_RE.match(u.rpartition("/")[2])
                   or u.rpartition("/")[2].startswith(".tmp-"))
    return out


def relative_name(folder: str, uri: str) -> str:
    return uri[len(folder.rstrip("/")) + 1:] if uri.startswith(folder.rstrip("/") + "/") else uri
