"""Write stage-2 style download folders for stage-3 tests and benchmarks.

The layout is what pipeline.download_shard leaves in OUT/downloads: per shard
``{shard}.tar`` (webdataset samples ``{member}.jpg/.txt/.json``, written with
webdataset's TarWriter as img2dataset does) and ``{shard}.parquet`` with every
input row (img2dataset's columns status, error_message, width, height, ...,
with the parquet ``key`` being the stage-1 key and stage-1 columns alongside).
Faults are explicit options, so each test says which one it plants.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds
from PIL import Image
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.shards.format import member_stem

ZH_CAPTIONS = [
    "一只猫坐在窗台上晒太阳", "两个孩子在公园里踢足球", "红色的汽车停在路边", "海边的日落非常美丽",
    "厨房里有一张木桌子", "一个女人拿着一把雨伞", "火车站里人来人往", "山上覆盖着白雪",
]


def make_jpeg(seed: int, size: int = 64, fmt: str = "JPEG") -> bytes:
    """A distinct small image per seed (blocks of random colours)."""
    rng = random.Random(seed)
    img = Image.new("RGB", (size, size))
    block = size // 4
    for bx in range(4):
        for by in range(4):
            colour = tuple(rng.randrange(256) for _ in range(3))
            img.paste(colour, (bx * block, by * block, (bx + 1) * block, (by + 1) * block))
    out = io.BytesIO()
    img.save(out, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return out.getvalue()


def synthetic_url(key: str) -> str:
    """The URL a synthetic download row claims (stage 3 draws the val split by it)."""
    return f"http://127.0.0.1/{key}.jpg"


@dataclass
class Row:
    key: str
    source: str = "wukong"
    caption: str = "一只猫坐在窗台上晒太阳"
    similarity: float | None = None
    image: bytes | None = b""  # b"" -> generated from the key; None -> failed download
    drop_image_member: bool = False  # success row whose .jpg never reached the tar
    caption_orig: str | None = None
    extra: dict | None = None  # more parquet/json columns (region box, source size), overriding defaults


def write_download_shard(folder: Path, name: str, rows: list[Row], seed: int = 0,
                         extra_tar_only: list[Row] | None = None) -> None:
    """Write ``{name}.tar`` + ``{name}.parquet``; parquet rows shuffled (completion order)."""
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    with wds.TarWriter(str(folder / f"{name}.tar")) as tar:
        for row in [*rows, *(extra_tar_only or [])]:
            image = row.image
            if image == b"":
                image = make_jpeg(int(hashlib.sha1(row.key.encode()).hexdigest()[:8], 16))
            ok = image is not None
            meta = {
                S.KEY: row.key, S.URL: synthetic_url(row.key), S.CAPTION: row.caption,
                S.SOURCE: row.source, S.SOURCE_ID: row.key.rsplit("_", 1)[-1],
                S.CAPTION_ORIG: row.caption_orig, S.SIMILARITY: row.similarity,
                "status": "success" if ok else "failed_to_download",
                "error_message": None if ok else "HTTP Error 404: Not Found",
                S.WIDTH: 64 if ok else None, S.HEIGHT: 64 if ok else None,
                "original_width": 64 if ok else None, "original_height": 64 if ok else None,
                S.SHA256: hashlib.sha256(image).hexdigest() if ok else None,
                **(row.extra or {}),
            }
            if row in (extra_tar_only or []):
                pass  # in the tar only: the parquet never got its row
            else:
                records.append(meta)
            if ok:
                sample = {"__key__": member_stem(row.key), "txt": row.caption,
                          "json": json.dumps(meta, indent=4)}
                if not row.drop_image_member:
                    sample["jpg"] = image
                tar.write(sample)
    random.Random(seed).shuffle(records)
    pq.write_table(pa.Table.from_pylist(records), str(folder / f"{name}.parquet"))


def standard_downloads(folder: Path, n_shards: int = 2, per_shard: int = 12) -> list[Row]:
    """A mixed laion_zh / wukong download folder without faults; returns all rows."""
    all_rows = []
    for s in range(n_shards):
        rows = []
        for i in range(per_shard):
            source = "laion_zh" if i % 2 == 0 else "wukong"
            key = f"{source}_{s:02d}{i:03d}"
            sim = round(0.1 + 0.03 * i, 3) if source == "laion_zh" else None
            rows.append(Row(key=key, source=source, caption=ZH_CAPTIONS[(s + i) % len(ZH_CAPTIONS)],
                            similarity=sim))
        write_download_shard(folder, f"{s:05d}", rows, seed=s)
        all_rows.extend(rows)
    return all_rows
