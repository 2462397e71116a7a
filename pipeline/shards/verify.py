"""The one shard verifier: every way a shard folder can be damaged, found and named.

`zhclip shards verify` prints its result; :func:`verify_dataset` is the same check as a list
of problem lines, for a writer's self-check and for tests.

Each tar is read once: the bytes pass through a sha256 on their way into the
tar parser, so the manifest checksum costs no second read. Per sample, the
members must all be there, the caption must be non-empty UTF-8, the json must
parse and name the sample's key, the image must decode and match its sha256;
per shard, the sidecar must hold the same samples (in order for final shards,
by key for img2dataset's completion-ordered parquet) and the counts must match
the manifest. Memory holds one sample and one sidecar at a time.

Problems carry a kind from a fixed vocabulary (below), so scripts and tests
can tell damages apart without parsing prose.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from zhclip.filters.images import ImageDecodeError, decode_image
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.shards import format as SH
from zhclip.pipeline.shards import reader as src
from zhclip.pipeline.shards import writer as SW
from zhclip.pipeline.shards.duplicates import DuplicateKeyFinder, confirm_duplicates

# Problem kinds.
MANIFEST_MISSING = "manifest_missing"
MANIFEST_UNREADABLE = "manifest_unreadable"
FILE_MISSING = "file_missing"
NOT_IN_MANIFEST = "not_in_manifest"
CHECKSUM_MISMATCH = "checksum_mismatch"
COUNT_MISMATCH = "count_mismatch"
TAR_MISSING = "tar_missing"
TAR_DAMAGED = "tar_damaged"
SIDECAR_MISSING = "sidecar_missing"
SIDECAR_UNREADABLE = "sidecar_unreadable"
SIDECAR_MISMATCH = "sidecar_mismatch"
MISSING_IMAGE = "missing_image"
MISSING_CAPTION = "missing_caption"
MISSING_JSON = "missing_json"
CAPTION_NOT_UTF8 = "caption_not_utf8"
CAPTION_EMPTY = "caption_empty"
JSON_UNREADABLE = "json_unreadable"
KEY_MISMATCH = "key_mismatch"
IMAGE_UNDECODABLE = "image_undecodable"
IMAGE_SHA256_MISMATCH = "image_sha256_mismatch"
DUPLICATE_KEY = "duplicate_key"

MAX_LISTED_PER_SHARD = 20


@dataclass
class Problem:
    kind: str
    where: str  # shard name, shard/member stem, or a file name
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.kind}: {self.where}" + (f": {self.detail}" if self.detail else "")


@dataclass
class VerifyResult:
    folder: str
    kind: str
    shards: int = 0
    samples: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    problems: list[Problem] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)  # every problem, listed or not

    @property
    def ok(self) -> bool:
        return not self.counts

    def to_json(self) -> dict[str, Any]:
        return {"folder": self.folder, "kind": self.kind, "ok": self.ok, "shards": self.shards,
                "samples": self.samples, "bytes_read": self.bytes_read, "seconds": round(self.seconds, 3),
                "problem_counts": dict(sorted(self.counts.items())),
                "problems": [asdict(p) for p in self.problems]}


class _ShardProblems:
    """Problems of one shard: all counted, the first MAX_LISTED_PER_SHARD listed."""

    def __init__(self, result: VerifyResult) -> None:
        self.result = result
        self.listed = 0
        self.unlisted: Counter[str] = Counter()

    def add(self, kind: str, where: str, detail: str = "") -> None:
        self.result.counts[kind] += 1
        if self.listed < MAX_LISTED_PER_SHARD:
            self.result.problems.append(Problem(kind, where, detail))
            self.listed += 1
        else:
            self.unlisted[kind] += 1

    def close(self, shard: str) -> None:
        for kind, n in sorted(self.unlisted.items()):
            self.result.problems.append(Problem(kind, shard, f"... and {n} more not listed"))


@dataclass
class _TarSample:
    stem: str
    key: str
    caption: str | None
    sha256: str | None


def _check_sample(shard: str, stem: str, members: dict[str, bytes], report: _ShardProblems,
                  decode: bool, check_sha: bool) -> _TarSample:
    """Members, caption, json and image of one sample.

    ``check_sha``: final shards record the stored image's sha256; img2dataset's
    json records the hash of the original download, before resizing, so it is
    not compared in download folders.
    """
    where = f"{shard}/{stem}"
    meta: dict[str, Any] = {}
    if S.MEMBER_JSON not in members:
        report.add(MISSING_JSON, where, "no .json member")
    else:
        try:
            meta = json.loads(members[S.MEMBER_JSON].decode("utf-8"))
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as err:
            report.add(JSON_UNREADABLE, where, str(err))
            meta = {}
    key = meta.get(S.KEY)
    if key is not None and SH.member_stem(str(key)) != stem:
        report.add(KEY_MISMATCH, where, f"json names key {key!r}")
    caption = None
    if S.MEMBER_TEXT not in members:
        report.add(MISSING_CAPTION, where, "no .txt member (sample without caption)")
    else:
        try:
            caption = members[S.MEMBER_TEXT].decode("utf-8")
            if not caption.strip():
                report.add(CAPTION_EMPTY, where, "caption is empty")
        except UnicodeDecodeError as err:
            report.add(CAPTION_NOT_UTF8, where, f"{err.reason} at byte {err.start}")
    image = next((members[e] for e in SH.IMAGE_EXTENSIONS if e in members), None)
    digest = None
    if image is None:
        report.add(MISSING_IMAGE, where, "no image member (.jpg/.png/.webp)")
    else:
        digest = hashlib.sha256(image).hexdigest()
        want = meta.get(S.SHA256)
        if check_sha and want and want != digest:
            report.add(IMAGE_SHA256_MISMATCH, where, f"json says {str(want)[:12]}..., bytes hash to {digest[:12]}...")
        if decode:
            try:
                decode_image(image)
            except ImageDecodeError as err:
                report.add(IMAGE_UNDECODABLE, where, str(err))
    return _TarSample(stem, str(key) if key is not None else SH.key_from_member_stem(stem), caption, digest)


def _check_sidecar_dataset(shard: src.ShardRef, table: Any, tar_samples: list[_TarSample],
                           report: _ShardProblems) -> None:
    """Final shards: the sidecar lists the tar's samples in the same order, with the same content."""
    keys = table.column(S.KEY).to_pylist()
    captions = table.column(S.CAPTION).to_pylist() if S.CAPTION in table.column_names else [None] * len(keys)
    shas = table.column(S.SHA256).to_pylist() if S.SHA256 in table.column_names else [None] * len(keys)
    if len(keys) != len(tar_samples):
        report.add(SIDECAR_MISMATCH, shard.name, f"{len(tar_samples)} samples in tar, {len(keys)} rows in parquet")
    for i, (ts, key, cap, sha) in enumerate(zip(tar_samples, keys, captions, shas, strict=False)):
        where = f"{shard.name}/{ts.stem}"
        if key != ts.key:
            report.add(SIDECAR_MISMATCH, where, f"parquet row {i} is key {key!r}, tar has {ts.key!r}")
            continue
        if ts.caption is not None and cap is not None and cap != ts.caption:
            report.add(SIDECAR_MISMATCH, where, "caption differs between parquet and tar")
        if ts.sha256 is not None and sha and sha != ts.sha256:
            report.add(SIDECAR_MISMATCH, where, "image sha256 in parquet differs from the tar's image")


def _check_sidecar_downloads(shard: src.ShardRef, table: Any, tar_samples: list[_TarSample],
                             report: _ShardProblems) -> None:
    """img2dataset folders: every success row has its sample in the tar and vice versa (by key)."""
    rows = {SH.member_stem(str(k)): c for k, c in zip(
        table.column(S.KEY).to_pylist(),
        table.column(S.CAPTION).to_pylist() if S.CAPTION in table.column_names else [None] * table.num_rows,
        strict=True)}
    in_tar = {ts.stem: ts for ts in tar_samples}
    for stem in sorted(set(rows) - set(in_tar)):
        report.add(SIDECAR_MISMATCH, f"{shard.name}/{stem}", "success row in parquet, no sample in tar")
    for stem in sorted(set(in_tar) - set(rows)):
        report.add(SIDECAR_MISMATCH, f"{shard.name}/{stem}", "sample in tar, no success row in parquet")
    for stem in sorted(set(rows) & set(in_tar)):
        cap, ts = rows[stem], in_tar[stem]
        if cap is not None and ts.caption is not None and cap != ts.caption:
            report.add(SIDECAR_MISMATCH, f"{shard.name}/{stem}", "caption differs between parquet and tar")


def _read_sidecar_for_verify(shard: src.ShardRef, kind: str, report: _ShardProblems) -> Any:
    if shard.parquet is None:
        report.add(SIDECAR_MISSING, shard.name, "no .parquet next to the tar")
        return None
    try:
        table = SH.read_shard_table(shard.parquet)
    except Exception as err:  # pyarrow's errors for a bad file are many types
        report.add(SIDECAR_UNREADABLE, shard.name, f"{type(err).__name__}: {err}")
        return None
    if S.KEY not in table.column_names:
        report.add(SIDECAR_UNREADABLE, shard.name, f"no {S.KEY!r} column")
        return None
    if kind == src.KIND_DOWNLOADS and SH.I2D_STATUS in table.column_names:
        import pyarrow.compute as pc

        table = table.filter(pc.equal(table.column(SH.I2D_STATUS), SH.I2D_SUCCESS))
    return table


def _check_manifest_file(folder: src.ShardFolder, name: str, got: SW.FileInfo | None,
                         report: _ShardProblems) -> None:
    entry = src.manifest_entry(folder, name.rpartition(".")[0])
    if folder.manifest is None or entry is None:
        return
    # the manifest names files by their path in the dataset folder (train/train-000000.tar)
    want = next((v for k, v in entry.get("files", {}).items() if k.rpartition("/")[2] == name), None)
    if want is None:
        report.add(NOT_IN_MANIFEST, name, "the manifest's shard entry does not list this file")
    elif got is None:
        report.add(FILE_MISSING, name, "listed in the manifest, absent on disk")
    elif got.bytes != want.get("bytes") or got.sha256 != want.get("sha256"):
        report.add(CHECKSUM_MISMATCH, name, f"{got.bytes} bytes sha256 {got.sha256[:12]}..., manifest "
                   f"{want.get('bytes')} bytes sha256 {str(want.get('sha256'))[:12]}...")


def verify_shard(folder: src.ShardFolder, shard: src.ShardRef, result: VerifyResult,
                 dups: DuplicateKeyFinder, decode: bool = True) -> None:
    report = _ShardProblems(result)
    tar_samples: list[_TarSample] = []
    tar_info: SW.FileInfo | None = None
    if shard.tar is None:
        kind = FILE_MISSING if src.manifest_entry(folder, shard.name) else TAR_MISSING
        report.add(kind, f"{shard.name}.tar", "tar absent")
    else:
        try:
            with src.paths.open_input(shard.tar) as raw:
                reader = src.TarStream(raw)
                for stem, members, error in SH.group_tar_members(reader):
                    if error:
                        report.add(TAR_DAMAGED, f"{shard.name}.tar",
                                   f"truncated or corrupt after {len(tar_samples)} complete samples ({error})")
                        break
                    tar_samples.append(_check_sample(shard.name, stem, members, report, decode,
                                                    check_sha=folder.kind == src.KIND_DATASET))
                else:
                    reader.drain()
                    end = reader.end_problem()
                    if end:
                        report.add(TAR_DAMAGED, f"{shard.name}.tar",
                                   f"truncated after {len(tar_samples)} complete samples ({end})")
                reader.drain()
            tar_info = SW.FileInfo(f"{shard.name}.tar", reader.sha.hexdigest(), reader.size)
            result.bytes_read += reader.size
        except OSError as err:
            report.add(TAR_DAMAGED, f"{shard.name}.tar", f"unreadable ({err})")
    if folder.kind == src.KIND_DATASET:
        _check_manifest_file(folder, f"{shard.name}.tar", tar_info, report)
        pq_info = SW.file_sha256(shard.parquet) if shard.parquet else None
        _check_manifest_file(folder, f"{shard.name}.parquet", pq_info, report)
    seen: Counter[str] = Counter(ts.stem for ts in tar_samples)
    for stem, n in seen.items():
        if n > 1:
            report.add(DUPLICATE_KEY, f"{shard.name}/{stem}", f"{n} samples in this tar")
    dups.add_many([ts.key for ts in tar_samples])
    table = _read_sidecar_for_verify(shard, folder.kind, report)
    if table is not None and shard.tar is not None:
        if folder.kind == src.KIND_DATASET:
            _check_sidecar_dataset(shard, table, tar_samples, report)
        else:
            _check_sidecar_downloads(shard, table, tar_samples, report)
    entry = src.manifest_entry(folder, shard.name)
    if entry is not None and shard.tar is not None and entry.get("samples") != len(tar_samples):
        report.add(COUNT_MISMATCH, shard.name,
                   f"{len(tar_samples)} samples in tar, manifest says {entry.get('samples')}")
    result.samples += len(tar_samples)
    result.shards += 1
    report.close(shard.name)


def verify_folder(folder: src.ShardFolder, decode: bool = True, progress: bool = False) -> VerifyResult:
    """Check everything; ``result.ok`` is True only if no problem of any kind was found."""
    started = time.perf_counter()
    result = VerifyResult(folder.uri, folder.kind)
    top = _ShardProblems(result)
    if folder.kind == src.KIND_DATASET:
        if folder.manifest_error:
            top.add(MANIFEST_UNREADABLE, SH.MANIFEST_NAME, folder.manifest_error)
        elif folder.manifest is None:
            top.add(MANIFEST_MISSING, SH.MANIFEST_NAME, "checksums and counts cannot be checked")
        else:
            for shard in folder.shards:
                if src.manifest_entry(folder, shard.name) is None:
                    top.add(NOT_IN_MANIFEST, shard.name, "shard files on disk that the manifest does not list")
    dups = DuplicateKeyFinder(src.expected_samples(folder))
    for shard in src._progress(folder.shards, progress, "shards"):
        verify_shard(folder, shard, result, dups, decode)
    if dups.candidates:
        ignored: list[str] = []
        all_keys = (str(k) for cols in src.iter_shard_columns(folder, ignored) for k in cols[S.KEY])
        per_shard_reported = {p.where.rpartition("/")[2] for p in result.problems if p.kind == DUPLICATE_KEY}
        for key, n in confirm_duplicates(dups.candidates, all_keys).items():
            if SH.member_stem(key) not in per_shard_reported:
                top.add(DUPLICATE_KEY, key, f"{n} samples with this key across shards")
    top.close("folder")
    result.seconds = time.perf_counter() - started
    return result


def format_result(result: VerifyResult) -> str:
    head = (f"{result.folder} ({result.kind}): {result.shards} shards, {result.samples} samples, "
            f"{result.bytes_read} tar bytes in {result.seconds:.1f}s")
    if result.ok:
        return head + "\nOK: no problems found"
    lines = [head, f"FAILED: {sum(result.counts.values())} problem(s): "
             + ", ".join(f"{k}={n}" for k, n in sorted(result.counts.items()))]
    lines += [f"  {p}" for p in result.problems]
    return "\n".join(lines)


def verify_dataset(folder: str, decode: bool = True) -> list[str]:
    """Problems found in a final dataset folder, one line each; empty means it is sound.

    The same check `zhclip shards verify` runs (checksums against the manifest, members,
    captions, json, images, sidecars, counts, duplicate keys), as plain lines.
    """
    result = verify_folder(src.open_folder(folder), decode=decode)
    return [str(p) for p in result.problems]  # every counted problem is listed or summarised
