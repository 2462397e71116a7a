"""A final dataset's files beside its shards: manifest.json, per-split sizes.json, the card.

The manifest lists every shard with its sample count and the sha256 and size of each file, the
config and the package versions; it is written last, so a folder with a manifest is a finished
folder. Reading it is :func:`zhclip.pipeline.shards.format.read_manifest`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from zhclip.pipeline.core import paths
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.shards.format import (
    JSON_FIELDS,
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    SIZES_NAME,
    relative_name,
    shard_files_on_disk,
)
from zhclip.pipeline.shards.writer import ShardInfo


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
                   config: dict[str, Any] | None = None,
                   extra: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[str]]:
    """Manifest of ``shards``; stale shard files removed; sizes, card and manifest written.

    ``extra``: more top-level manifest entries, e.g. stage 3's ``embeddings`` (its files,
    sha256 and sizes, relative to the output folder).

    Returns (manifest, names of the removed stale files).
    """
    manifest = build_manifest(shards, config, extra)
    keep = {name for s in manifest["shards"] for name in s["files"]}
    stale = remove_stale_shards(folder, keep)
    write_dataset_files(folder, manifest)
    return manifest, stale


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


def remove_stale_shards(folder: str, keep: set[str]) -> list[str]:
    """Delete shard files of an earlier run that this run did not write; returns their names.

    ``keep`` holds names relative to ``folder`` (``train/train-000000.tar``);
    flat files of the first layout are stale once a new run rewrote the folder.
    """
    removed = []
    for uri in shard_files_on_disk(folder):
        name = relative_name(folder, uri)
        if name not in keep:
            paths.remove(uri)
            removed.append(name)
    return removed
