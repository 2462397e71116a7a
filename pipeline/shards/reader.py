"""What a path given to ``zhclip shards`` holds, and its samples, one tar at a time.

Two layouts share webdataset + parquet: the final shards of stage 3
(OUT/dataset: ``{split}/{split}-NNNNNN.tar`` + sidecar, manifest.json; the
first, flat layout too) and
img2dataset's download folders (OUT/downloads: ``{shard}.tar`` + ``{shard}.parquet``
with every input row and its status). :func:`open_folder` tells them apart and
lists the shards; :func:`iter_samples` streams samples shard by shard, so memory
holds one sample (and one sidecar's metadata) at a time, whatever the folder's
size. Damage never raises from the iterators: it is appended to a problem list
the caller prints, so a command shows what it could read and then says what it
could not.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
from zhclip.pipeline.core import paths
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.shards import downloads as DL
from zhclip.pipeline.shards import format as SH

KIND_DATASET = "dataset"
KIND_DOWNLOADS = "downloads"
# Problems listed per shard before the rest are summarised as "+N more".
MAX_PROBLEMS_PER_SHARD = 20


class InspectError(Exception):
    """Input that cannot be inspected at all; printed as one line with a non-zero exit."""


@dataclass(frozen=True)
class ShardRef:
    """One shard: its tar and sidecar (None when that file is absent)."""

    name: str
    split: str | None
    tar: str | None
    parquet: str | None


@dataclass
class ShardFolder:
    uri: str
    kind: str
    shards: list[ShardRef]
    manifest: dict[str, Any] | None = None
    manifest_error: str | None = None
    note: str | None = None  # e.g. which subfolder of an OUT root was picked


@dataclass
class Sample:
    """One sample as the inspection commands show it, from either layout."""

    key: str
    source: str
    caption: str | None
    score: float | None
    width: int | None
    height: int | None
    url: str | None
    image: bytes | None
    shard: str
    meta: dict[str, Any] = field(default_factory=dict)


# --- which folder -----------------------------------------------------------------------


def _kind_of_files(names: list[str], uri: str | None = None) -> str | None:
    if SH.MANIFEST_NAME in names or any(SH.SHARD_FILE_RE.match(n) for n in names):
        return KIND_DATASET
    if any(n.endswith((".tar", ".parquet")) and not n.startswith((".", "_")) for n in names):
        return KIND_DOWNLOADS
    if uri is not None and SH.shard_files_on_disk(uri):  # split folders, no manifest
        return KIND_DATASET
    return None


def open_folder(path: str) -> ShardFolder:
    """Identify ``path`` (a dataset folder, a download folder, or an OUT root) and list its shards."""
    uri = path.rstrip("/") or "/"
    fs, local = paths.filesystem_for(uri)
    try:
        info = fs.get_file_info(local)
    except (OSError, ValueError) as err:
        raise InspectError(f"{path}: cannot be read ({err})") from None
    if info.type == pafs.FileType.NotFound:
        raise InspectError(f"{path}: no such folder")
    if info.type != pafs.FileType.Directory:
        raise InspectError(f"{path} is a file; pass the folder that holds the shards")
    names = [u.rpartition("/")[2] for u in paths.list_files(uri)]
    kind = _kind_of_files(names, uri)
    if kind is None:
        # An OUT root: prefer the final shards, else the downloads.
        for sub, sub_kind in ((SH.DATASET_DIR, KIND_DATASET), (SH.DOWNLOADS_DIR, KIND_DOWNLOADS)):
            sub_uri = paths.join(uri, sub)
            sub_names = [u.rpartition("/")[2] for u in paths.list_files(sub_uri)]
            if _kind_of_files(sub_names, sub_uri) == sub_kind:
                folder = _open_kind(sub_uri, sub_kind)
                folder.note = f"{path} is an output root: inspecting {sub_uri}"
                return folder
        what = "is empty" if not names else "holds no shards"
        raise InspectError(
            f"{path} {what}: expected a zhclip dataset folder ({{split}}-NNNNNN.tar + .parquet + "
            f"{SH.MANIFEST_NAME}), an img2dataset download folder ({{shard}}.tar + .parquet), "
            "or an output root holding dataset/ or downloads/")
    return _open_kind(uri, kind)


def _open_kind(uri: str, kind: str) -> ShardFolder:
    if kind == KIND_DOWNLOADS:
        shards = [ShardRef(s.name, None, s.tar, s.parquet) for s in DL.list_download_shards(uri)]
        return ShardFolder(uri, kind, shards)
    manifest, manifest_error = None, None
    if paths.exists(paths.join(uri, SH.MANIFEST_NAME)):
        try:
            manifest = SH.read_manifest(uri)
            if not isinstance(manifest.get("shards"), list):
                raise ValueError("no 'shards' list")
        except (ValueError, UnicodeDecodeError, OSError) as err:
            manifest, manifest_error = None, f"{SH.MANIFEST_NAME}: unreadable ({err})"
    # Files on disk (either layout) and, when readable, the manifest's list: a
    # listed file that is absent becomes None, which the commands report.
    on_disk = {u.rpartition("/")[2]: u for u in SH.shard_files_on_disk(uri)}
    splits = {s.name: s.split for s in SH.scan_dataset_shards(uri)}
    if manifest is not None:
        try:
            splits.update({s.name: s.split for s in SH.dataset_shards(uri)})
        except (KeyError, TypeError, ValueError) as err:
            manifest_error = f"{SH.MANIFEST_NAME}: malformed shard entry ({err})"
    shards = [
        ShardRef(stem, split, on_disk.get(f"{stem}.tar"), on_disk.get(f"{stem}.parquet"))
        for stem, split in sorted(splits.items(), key=lambda kv: (kv[1], kv[0]))
    ]
    return ShardFolder(uri, KIND_DATASET, shards, manifest, manifest_error)


def manifest_entry(folder: ShardFolder, name: str) -> dict[str, Any] | None:
    for shard in (folder.manifest or {}).get("shards", []):
        if shard.get("name") == name:
            return shard
    return None


def file_size(uri: str | None) -> int | None:
    if uri is None:
        return None
    fs, local = paths.filesystem_for(uri)
    info = fs.get_file_info(local)
    return info.size if info.type == pafs.FileType.File else None


# --- sidecar metadata -----------------------------------------------------------------------

# Columns the commands read from a sidecar, whichever layout it comes from.
META_COLUMNS = [S.KEY, S.SOURCE, S.CAPTION, S.SCORE, S.WIDTH, S.HEIGHT]


def read_sidecar(shard: ShardRef, kind: str) -> pa.Table:
    """The shard's samples as META_COLUMNS; download rows that failed are left out.

    Raises InspectError naming the file when it is missing or unreadable.
    """
    if shard.parquet is None:
        raise InspectError(f"{shard.name}: parquet sidecar missing")
    try:
        table = SH.read_shard_table(shard.parquet)
    except Exception as err:  # pyarrow raises ArrowInvalid, OSError, ... for a bad file
        raise InspectError(f"{shard.name}: parquet sidecar unreadable ({type(err).__name__}: {err})") from None
    if kind == KIND_DOWNLOADS and SH.I2D_STATUS in table.column_names:
        import pyarrow.compute as pc

        table = table.filter(pc.equal(table.column(SH.I2D_STATUS), SH.I2D_SUCCESS))
    if S.SCORE not in table.column_names and S.SIMILARITY in table.column_names:
        table = table.append_column(S.SCORE, table.column(S.SIMILARITY))
    if S.KEY not in table.column_names:
        raise InspectError(f"{shard.name}: parquet sidecar has no {S.KEY!r} column")
    out_schema = pa.schema([S.DATASET_SCHEMA.field(c) for c in META_COLUMNS])
    try:
        return S.conform(table.select([c for c in META_COLUMNS if c in table.column_names]), out_schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        raise InspectError(f"{shard.name}: parquet sidecar has unexpected column types ({err})") from None


def sidecar_rows(shard: ShardRef, kind: str) -> int | None:
    """Sample count from the sidecar, or None when it cannot be read."""
    try:
        return read_sidecar(shard, kind).num_rows
    except InspectError:
        return None


# --- samples from the tars ----------------------------------------------------------------


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def sample_from_members(stem: str, members: dict[str, bytes], shard: str,
                        problems: list[str] | None = None) -> Sample:
    """Build a Sample from one tar group; what is missing or malformed goes to ``problems``."""
    problems = problems if problems is not None else []
    meta: dict[str, Any] = {}
    if S.MEMBER_JSON in members:
        try:
            meta = json.loads(members[S.MEMBER_JSON].decode("utf-8"))
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as err:
            problems.append(f"{shard}/{stem}: json member unreadable ({err})")
            meta = {}
    caption: str | None = None
    if S.MEMBER_TEXT in members:
        try:
            caption = members[S.MEMBER_TEXT].decode("utf-8")
        except UnicodeDecodeError as err:
            problems.append(f"{shard}/{stem}: caption is not UTF-8 ({err.reason} at byte {err.start})")
            caption = members[S.MEMBER_TEXT].decode("utf-8", "replace")
    else:
        problems.append(f"{shard}/{stem}: sample without caption (no .{S.MEMBER_TEXT} member)")
    image = next((members[e] for e in SH.IMAGE_EXTENSIONS if e in members), None)
    if image is None:
        problems.append(f"{shard}/{stem}: no image member")
    score = meta.get(S.SCORE, meta.get(S.SIMILARITY))
    return Sample(
        key=str(meta.get(S.KEY) or SH.key_from_member_stem(stem)),
        source=str(meta.get(S.SOURCE) or SH.UNKNOWN_SOURCE),
        caption=caption if caption is not None else meta.get(S.CAPTION),
        score=_float(score),
        width=_int(meta.get(S.WIDTH)),
        height=_int(meta.get(S.HEIGHT)),
        url=meta.get(S.URL),
        image=image,
        shard=shard,
        meta=meta,
    )


END_OF_ARCHIVE = b"\0" * 1024  # two zero blocks close every tar


class TarStream:
    """Read-through wrapper over a tar file: sha256, byte count, and the last KiB read.

    Python's tarfile ends quietly when a file is cut exactly at a member
    boundary, so "it parsed" does not mean "it is complete": :meth:`end_problem`
    checks the end-of-archive marker once the stream has been drained.
    """

    def __init__(self, inner: Any) -> None:
        import hashlib

        self.inner = inner
        self.sha = hashlib.sha256()
        self.size = 0
        self.tail = b""

    def read(self, n: int = -1) -> bytes:
        data = self.inner.read(n)
        self.sha.update(data)
        self.size += len(data)
        self.tail = (self.tail + data[-len(END_OF_ARCHIVE):])[-len(END_OF_ARCHIVE):]
        return data

    def drain(self) -> None:
        """Read what the parser left (end marker and padding, or bytes after damage)."""
        while self.read(1 << 20):
            pass

    def end_problem(self) -> str | None:
        if self.size % 512:
            return f"size {self.size} is not a multiple of 512 bytes"
        if self.tail != END_OF_ARCHIVE:
            return "no end-of-archive marker (cut short at a member boundary)"
        return None


def iter_tar_groups(shard: ShardRef, problems: list[str]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(member stem, {extension: bytes}) per sample; a damaged tar ends with a problem."""
    if shard.tar is None:
        problems.append(f"{shard.name}: tar missing")
        return
    try:
        raw = paths.open_input(shard.tar)
    except OSError as err:
        problems.append(f"{shard.name}: tar unreadable ({err})")
        return
    n = 0
    with raw:
        stream = TarStream(raw)
        for stem, members, error in SH.group_tar_members(stream):
            if error:
                problems.append(f"{shard.name}.tar: damaged or truncated after {n} samples ({error})")
                return
            n += 1
            yield stem, members
        stream.drain()
        end = stream.end_problem()
        if end:
            problems.append(f"{shard.name}.tar: damaged or truncated after {n} samples ({end})")


def iter_samples(folder: ShardFolder, problems: list[str], shards: list[ShardRef] | None = None,
                 progress: bool = False) -> Iterator[Sample]:
    """Every sample of the folder in shard order, one in memory at a time."""
    todo = folder.shards if shards is None else shards
    for shard in _progress(todo, progress, "shards"):
        for stem, members in iter_tar_groups(shard, problems):
            yield sample_from_members(stem, members, shard.name, problems)


def _progress(items: list[Any], enabled: bool, unit: str) -> Any:
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, unit=unit, disable=None, leave=False)


def cap_problems(problems: list[str], limit: int = MAX_PROBLEMS_PER_SHARD) -> list[str]:
    if len(problems) <= limit:
        return problems
    return [*problems[:limit], f"... and {len(problems) - limit} more problem(s)"]


def shard_columns(folder: ShardFolder, shard: ShardRef, problems: list[str]
                   ) -> dict[str, list[Any]]:
    """META_COLUMNS of one shard: from the sidecar, or from the tar when the sidecar fails."""
    try:
        table = read_sidecar(shard, folder.kind)
        return {c: table.column(c).to_pylist() for c in META_COLUMNS}
    except InspectError as err:
        problems.append(f"{err}; read from the tar instead")
    cols: dict[str, list[Any]] = {c: [] for c in META_COLUMNS}
    for sample in iter_samples(folder, problems, [shard]):
        for c, v in zip(META_COLUMNS, (sample.key, sample.source, sample.caption, sample.score,
                                           sample.width, sample.height), strict=True):
            cols[c].append(v)
    return cols


def iter_shard_columns(folder: ShardFolder, problems: list[str], progress: bool = False
                       ) -> Iterator[dict[str, list[Any]]]:
    for shard in _progress(folder.shards, progress, "shards"):
        yield shard_columns(folder, shard, problems)


def expected_samples(folder: ShardFolder) -> int:
    if folder.manifest:
        return int(folder.manifest.get("total_samples") or 0)
    return 10_000 * max(1, len(folder.shards))
