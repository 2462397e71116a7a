"""Shard folders for the `zhclip shards` tests: written by pipeline.shards, then damaged on purpose.

Each damage helper changes one thing in a copy of a clean folder, so a test
can say which damage it planted and check that verify names exactly that.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.demo.synthetic import ZH_CAPTIONS, make_jpeg
from zhclip.pipeline.shards import format as SH
from zhclip.pipeline.shards import manifest as MF
from zhclip.pipeline.shards import writer as SW

SOURCES = ("laion_zh", "wukong", "coco_zh")


def make_sample(i: int, prefix: str = "", size: int = 64) -> SH.ShardSample:
    source = SOURCES[i % len(SOURCES)]
    image = make_jpeg(1000 + i, size=size)
    caption = ZH_CAPTIONS[i % len(ZH_CAPTIONS)] + "很" * (i % 7)
    meta = {S.SOURCE: source, S.URL: f"http://127.0.0.1/{i}.jpg",
            S.CAPTION_ORIG: "a cat" if source == "coco_zh" else None,
            S.SCORE: round(0.2 + 0.01 * i, 4), S.WIDTH: size, S.HEIGHT: size,
            S.SHA256: hashlib.sha256(image).hexdigest()}
    return SH.ShardSample(f"{prefix}{source}_{i:05d}", image, caption, meta)


def write_dataset(folder: Path, shards: tuple[tuple[str, int], ...] = (("train", 5), ("train", 5), ("val", 3)),
                  manifest: bool = True, key_prefix: str = "") -> list[SH.ShardSample]:
    """Write shards with the project's writer (and a manifest); returns every sample in order."""
    infos, all_samples, i = [], [], 0
    index = {"train": 0, "val": 0}
    for split, n in shards:
        samples = [make_sample(i + j, key_prefix) for j in range(n)]
        i += n
        infos.append(SW.write_shard(str(folder), split, index[split], samples))
        index[split] += 1
        all_samples.extend(samples)
    if manifest:
        MF.write_dataset_files(str(folder), MF.build_manifest(infos, {"output": str(folder.parent)}))
    return all_samples


def copy_folder(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def rewrite_tar(tar_path: Path, change: Callable[[str, bytes], bytes | None]) -> None:
    """Rewrite a tar member by member; ``change`` returns new bytes, or None to drop the member."""
    with tarfile.open(tar_path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as out:
        for info, data in members:
            new = change(info.name, data)
            if new is None:
                continue
            info.size = len(new)
            out.addfile(info, io.BytesIO(new))
    tar_path.write_bytes(buf.getvalue())


def truncate(path: Path, fraction: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def rewrite_sidecar(parquet_path: Path, change: Callable[[list[dict]], list[dict]]) -> None:
    table = pq.read_table(parquet_path)
    rows = change(table.to_pylist())
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), parquet_path)
