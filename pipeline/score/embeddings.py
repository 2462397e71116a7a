"""The embeddings stage 3 computes, kept: OUT/embeddings/ in clip-retrieval's layout.

With ``score.save_embeddings`` every final shard N gets three row-aligned files::

    OUT/embeddings/img_emb/img_emb_N.npy       L2-normalised image embeddings, float16 (n, d)
    OUT/embeddings/text_emb/text_emb_N.npy     L2-normalised caption embeddings, float16 (n, d)
    OUT/embeddings/metadata/metadata_N.parquet key, caption, url, ... of the same n samples

N is zero-padded (``000003``) so that a plain name sort, which is how autofaiss and
clip-retrieval walk a folder, is also shard order: a faiss id is then a row of the
metadata files read in name order. N counts train shards first, then val shards.
Each file holds exactly the samples of one final shard in their tar order, so it is
written by the same step that writes the shard, atomically, and a rerun writes the
same bytes. Nothing ever holds more than one shard's embeddings.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from zhclip.pipeline.core import paths
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.core.errors import ConfigError
from zhclip.pipeline.shards import format as SH

EMBEDDINGS_DIR = "embeddings"
IMG_EMB = "img_emb"
TEXT_EMB = "text_emb"
METADATA = "metadata"
# Where `zhclip search` looks for an autofaiss index: autofaiss 1.x (`autofaiss quantize
# --output_path index/img_emb`) names its file after the index it chose, so any one
# index/img_emb/*.index; autofaiss 2.x (`build_index --index_path`) takes a file name:
# index/image.index.
INDEX_DIR = "index"
INDEX_NAMES = {IMG_EMB: "image.index", TEXT_EMB: "text.index"}
DTYPE = np.float16
NUMBER_WIDTH = 6
SHARD_COLUMN = "shard"
METADATA_SCHEMA = pa.schema(
    [
        (S.KEY, pa.string()),
        (S.CAPTION, pa.string()),
        (S.URL, pa.string()),
        (S.SOURCE, pa.string()),
        (S.SPLIT, pa.string()),
        (SHARD_COLUMN, pa.string()),
        (S.SCORE, pa.float64()),
    ]
)


def check_config(score_cfg: Any) -> None:
    """``save_embeddings`` needs a model that computes embeddings; say so before any work."""
    if getattr(score_cfg, "save_embeddings", False) and score_cfg.backend == "precomputed":
        raise ConfigError(
            "score.save_embeddings: the precomputed backend computes no embeddings; "
            "use backend mclip or zhclip, or set score.save_embeddings=false"
        )


def record_fields(image_emb: np.ndarray, text_emb: np.ndarray) -> dict[str, bytes]:
    """One pair's embeddings as they travel with its record: float16 bytes (2 bytes a dim)."""
    return {IMG_EMB: image_emb.astype(DTYPE).tobytes(), TEXT_EMB: text_emb.astype(DTYPE).tobytes()}


def shard_number(
    split: str, index: int, sizes: Mapping[tuple[str, str], int], samples_per_shard: int
) -> int:
    """Shard N of the embeddings folder: train shards first, then val, each in index order.

    ``sizes`` maps (split, bucket) to a sample count (the final-position buckets), so
    the number of shards each split has is known before any shard is written.
    """
    before = 0
    for sp in SH.SPLITS:
        if sp == split:
            return before + index
        before += math.ceil(sum(n for (s, _), n in sizes.items() if s == sp) / samples_per_shard)
    raise ValueError(f"unknown split {split!r}")


def file_name(kind: str, number: int) -> str:
    """Name relative to OUT/embeddings, e.g. ``img_emb/img_emb_000003.npy``."""
    ext = "parquet" if kind == METADATA else "npy"
    return f"{kind}/{kind}_{number:0{NUMBER_WIDTH}d}.{ext}"


def npy_bytes(matrix: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(matrix), allow_pickle=False)
    return buf.getvalue()


def _matrix(blobs: Sequence[bytes]) -> np.ndarray:
    rows = [np.frombuffer(b, dtype=DTYPE) for b in blobs]
    return np.stack(rows) if rows else np.zeros((0, 0), dtype=DTYPE)


def _file_info(name: str, data: bytes) -> dict[str, Any]:
    return {"name": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def write_shard_embeddings(
    folder: str,
    number: int,
    shard: str,
    records: Sequence[dict[str, Any]],
    image_embs: Sequence[bytes],
    text_embs: Sequence[bytes],
) -> dict[str, Any]:
    """Write shard ``number``'s three files under ``folder`` (OUT/embeddings); returns its
    manifest entry: {"number", "shard", "samples", "files": [{name, bytes, sha256}]}."""
    meta = pa.Table.from_pylist(
        [
            {
                S.KEY: r[S.KEY],
                S.CAPTION: r[S.CAPTION],
                S.URL: r.get(S.URL),
                S.SOURCE: r.get(S.SOURCE),
                S.SPLIT: r.get(S.SPLIT),
                SHARD_COLUMN: shard,
                S.SCORE: r.get(S.SCORE),
            }
            for r in records
        ],
        schema=METADATA_SCHEMA,
    )
    files = []
    for kind, blobs in ((IMG_EMB, image_embs), (TEXT_EMB, text_embs)):
        data = npy_bytes(_matrix(blobs))
        name = file_name(kind, number)
        paths.write_bytes_atomic(paths.join(folder, name), data)
        files.append(_file_info(name, data))
    buf = pa.BufferOutputStream()
    pq.write_table(meta, buf)
    data = buf.getvalue().to_pybytes()
    name = file_name(METADATA, number)
    paths.write_bytes_atomic(paths.join(folder, name), data)
    files.append(_file_info(name, data))
    return {"number": number, "shard": shard, "samples": len(records), "files": files}


def finish_embeddings(folder: str, written: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The manifest's ``embeddings`` entry; removes files (and any index) of an earlier run.

    A stale ``img_emb_N.npy`` would be read by autofaiss as part of the corpus, and an
    index built before this run no longer matches the files, so both go. None when this
    run kept no embeddings.
    """
    keep = {f["name"] for entry in written for f in entry["files"]}
    for sub in (IMG_EMB, TEXT_EMB, METADATA, INDEX_DIR, *(f"{INDEX_DIR}/{k}" for k in INDEX_NAMES)):
        for uri in paths.list_files(paths.join(folder, sub)):
            if f"{sub}/{uri.rpartition('/')[2]}" not in keep:
                paths.remove(uri)
    if not written:
        return None
    entries = sorted(written, key=lambda e: e["number"])
    return {
        "folder": EMBEDDINGS_DIR,  # relative to OUT, beside dataset/
        "layout": {
            "image": f"{IMG_EMB}/{IMG_EMB}_{{N:0{NUMBER_WIDTH}d}}.npy",
            "text": f"{TEXT_EMB}/{TEXT_EMB}_{{N:0{NUMBER_WIDTH}d}}.npy",
            "metadata": f"{METADATA}/{METADATA}_{{N:0{NUMBER_WIDTH}d}}.parquet",
            "dtype": np.dtype(DTYPE).name,
            "normalised": "L2",
            "order": "N: train shards then val shards; rows: the shard's tar order",
        },
        "total_samples": sum(e["samples"] for e in entries),
        "shards": entries,
    }
