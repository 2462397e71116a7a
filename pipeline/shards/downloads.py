"""Reading download shards: img2dataset's webdataset output, stage 3's input.

OUT/downloads (or any folder img2dataset wrote with ``--output_format
webdataset``) holds ``{shard}.tar`` + ``{shard}.parquet``. :func:`read_download_shard`
joins the two on img2dataset's key (never on position: the parquet is in
completion order), restores zhclip's key and source from the columns stage 1
carried (``zhclip_key``, ``source``), and turns a missing half into a
``missing_member`` reject.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq
from zhclip.pipeline.core import paths
from zhclip.pipeline.core import reasons as RS
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.shards.format import (
    I2D_CAPTION,
    I2D_KEY,
    I2D_STATUS,
    I2D_SUCCESS,
    IMAGE_EXTENSIONS,
    UNKNOWN_SOURCE,
    group_tar_members,
    key_from_member_stem,
    member_stem,
    read_shard_table,
)

log = logging.getLogger(__name__)

# --- download shard readers (img2dataset output) ----------------------------------------------


@dataclass(frozen=True)
class DownloadShard:
    """One img2dataset output shard; either half may be missing."""

    name: str
    tar: str | None
    parquet: str | None


def list_download_shards(folder: str) -> list[DownloadShard]:
    """Pair ``{shard}.tar`` and ``{shard}.parquet`` in an img2dataset output folder.

    Temporary files (``.``-prefixed) and img2dataset's ``_stats.json`` are skipped.
    """
    found: dict[str, dict[str, str]] = {}
    for uri in paths.list_files(folder):
        name = uri.rpartition("/")[2]
        if name.startswith((".", "_")):
            continue
        for ext in ("tar", "parquet"):
            if name.endswith(f".{ext}"):
                found.setdefault(name[: -len(ext) - 1], {})[ext] = uri
    return [DownloadShard(n, f.get("tar"), f.get("parquet")) for n, f in sorted(found.items())]


def check_download_columns(shards: Sequence[DownloadShard], folder: str,
                           limit: int = 16) -> list[str]:
    """Stop before scoring a download folder that lacks the columns the rules need.

    A folder written by plain img2dataset holds only the columns its
    ``--save_additional_columns`` named. Without ``source`` every row would be
    scored as source "unknown" (no 0.26 rule for LAION, COCO/VG dropped as
    duplicate images), so that raises UsageError naming the missing columns and
    the command that writes them. Returns the recommended columns that are
    absent (``zhclip_key``: keys stay img2dataset's own), for a warning.
    Reads the parquet footers of the first ``limit`` shards only.
    """
    from zhclip.pipeline.core.errors import UsageError

    missing_rec: set[str] = set()
    for shard in [s for s in shards if s.parquet is not None][:limit]:
        fs, path = paths.filesystem_for(shard.parquet)
        try:
            names = set(pq.read_schema(path, filesystem=fs).names)
        except Exception:  # unreadable footer: read_download_shard reports it per shard
            continue
        missing = [c for c in S.I2D_REQUIRED_COLUMNS if c not in names]
        if missing:
            cols = json.dumps(list(S.I2D_RECOMMENDED_COLUMNS))
            raise UsageError(
                f"{folder}: {shard.name}.parquet has no column {', '.join(missing)}, which "
                f"`zhclip score` needs to apply the per-source rules (it has: "
                f"{', '.join(sorted(names))}). Download the URL shards with `zhclip download`, or "
                f"with img2dataset ... --save_additional_columns '{cols}'")
        if S.ERROR_CLASS not in names:  # plain img2dataset (stage 2 writes its own keys)
            missing_rec |= {c for c in S.I2D_RECOMMENDED_COLUMNS if c not in names}
    return sorted(missing_rec)


@dataclass
class DownloadedSample:
    """A successful download row joined with its tar members (``member``: their stem).

    ``image`` is None when the tar lacks the image (the reader then also sets
    ``problem``); ``meta`` is the full img2dataset row (stage-1 columns included).
    """

    key: str
    source: str
    url: str | None
    caption: str | None
    caption_orig: str | None
    similarity: float | None
    image: bytes | None
    member: str
    meta: dict[str, Any]
    problem: str | None = None


def _float_or_none(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _download_sample(row: dict[str, Any], stem: str, image: bytes | None,
                     caption_member: bytes | None, problem: str | None) -> DownloadedSample:
    caption = row.get(I2D_CAPTION)
    if caption is None and caption_member is not None:
        caption = caption_member.decode("utf-8", "replace")
    return DownloadedSample(
        # zhclip_key: a plain img2dataset run keys by position; the stable key rode along
        key=str(row.get(S.ZHCLIP_KEY) or row.get(I2D_KEY) or key_from_member_stem(stem)),
        source=str(row.get(S.SOURCE) or UNKNOWN_SOURCE),
        url=row.get(S.URL),
        caption=caption,
        caption_orig=row.get(S.CAPTION_ORIG),
        similarity=_float_or_none(row.get(S.SIMILARITY)),
        image=image,
        member=stem,
        meta=row,
        problem=problem,
    )


@dataclass
class DownloadShardContents:
    samples: list[DownloadedSample]
    not_success_rows: int
    notes: list[str]


def read_download_shard(shard: DownloadShard) -> DownloadShardContents:
    """Every successful row of one download shard, joined with its tar members by key.

    A success row without an image member, a sample in the tar without a row
    (described by its own json member), a tar cut short, an unreadable parquet:
    each becomes a sample with ``problem`` set (``missing_member``), never an
    exception, so the caller can count and reject it.
    """
    notes: list[str] = []
    rows: dict[str, dict[str, Any]] = {}
    copies: dict[str, int] = {}  # stem -> rows (or tar samples) sharing it, when more than one
    failed_stems: set[str] = set()
    if shard.parquet is not None:
        try:
            table = read_shard_table(shard.parquet)
            for row in table.to_pylist():
                if row.get(I2D_STATUS, I2D_SUCCESS) == I2D_SUCCESS:
                    stem = member_stem(str(row.get(I2D_KEY)))
                    if stem in rows:
                        copies[stem] = copies.get(stem, 1) + 1
                    rows[stem] = row
                else:
                    failed_stems.add(member_stem(str(row.get(I2D_KEY))))
        except Exception as err:  # unreadable sidecar: fall back on the json members
            notes.append(f"{shard.parquet}: unreadable parquet ({type(err).__name__}: {err})")
    else:
        notes.append(f"shard {shard.name}: parquet missing")

    members: dict[str, dict[str, bytes]] = {}
    groups_per_stem: dict[str, int] = {}
    if shard.tar is not None:
        try:
            with paths.open_input(shard.tar) as f:
                for stem, group, error in group_tar_members(f):
                    if stem:
                        groups_per_stem[stem] = groups_per_stem.get(stem, 0) + 1
                        members.setdefault(stem, {}).update(group)
                    if error:
                        notes.append(f"{shard.tar}: tar cut short after {len(members)} samples ({error})")
                        # the last group may be half written: keep only complete members
        except Exception as err:
            notes.append(f"{shard.tar}: unreadable tar ({type(err).__name__}: {err})")
    else:
        notes.append(f"shard {shard.name}: tar missing")

    for stem, n in groups_per_stem.items():
        if n > 1 and stem not in failed_stems:
            copies[stem] = max(copies.get(stem, 1), n)
    samples: list[DownloadedSample] = []
    stray = failed_stems & set(members)
    if stray:
        notes.append(f"shard {shard.name}: {len(stray)} failed rows have tar members (ignored)")
    for stem in sorted(set(rows) | (set(members) - failed_stems)):
        group = members.get(stem, {})
        row = rows.get(stem)
        if row is None:
            try:
                row = json.loads(group[S.MEMBER_JSON].decode("utf-8"))
            except (KeyError, ValueError, RecursionError):
                row = {}
            if not isinstance(row, dict):  # a json member that is a list or a number
                row = {}
        image = next((group[e] for e in IMAGE_EXTENSIONS if e in group), None)
        problem = None
        if image is None:
            problem = RS.REASON_MISSING_MEMBER
        elif stem not in rows and not row:
            problem = RS.REASON_MISSING_MEMBER  # no metadata at all for these pixels
        if stem in copies:
            # One key, several samples: which pairs belong together is unknowable,
            # so every copy is rejected (and counted), none kept at random.
            notes.append(f"shard {shard.name}: key {stem!r} appears {copies[stem]} times (all rejected)")
            samples.extend(_download_sample(row, stem, image, group.get(S.MEMBER_TEXT),
                                            RS.REASON_DUPLICATE_KEY) for _ in range(copies[stem]))
            continue
        samples.append(_download_sample(row, stem, image, group.get(S.MEMBER_TEXT), problem))
    return DownloadShardContents(samples, len(failed_stems), notes)
