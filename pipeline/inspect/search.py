"""`zhclip search OUT --text "…"` / `--image FILE`: nearest pairs of the corpus by CLIP embedding.

Reads what stage 3 kept with ``score.save_embeddings`` (OUT/embeddings, clip-retrieval's
layout; :mod:`zhclip.pipeline.score.embeddings`). The query is embedded by the scorer of
the run itself, rebuilt from the config in OUT/dataset/manifest.json, so query and corpus
share one embedding space.

The index: the one autofaiss built, when there is one: ``autofaiss quantize --embeddings_path
OUT/embeddings/img_emb --output_path OUT/embeddings/index/img_emb`` (autofaiss 1.x, the pinned
version; text_emb for ``--in text``) or ``autofaiss build_index --embeddings ...
--index_path OUT/embeddings/index/image.index`` (2.x). Otherwise an exact inner-product
index (faiss ``IndexFlatIP``) built here from the .npy files, one file at a time; it holds
every vector in memory, so build an autofaiss index for a large corpus. A faiss id is
the row of the embedding files read in name order, which is also the metadata files' order.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from zhclip.pipeline.core import paths
from zhclip.pipeline.core.config import config_from_dict
from zhclip.pipeline.core.errors import UsageError
from zhclip.pipeline.inspect.escape import terminal_safe
from zhclip.pipeline.score import embeddings as E
from zhclip.pipeline.shards import format as SH

DEFAULT_K = 5
KINDS = {"image": E.IMG_EMB, "text": E.TEXT_EMB}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="output root of a stage-3 run with score.save_embeddings")
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", help="a caption to search with")
    query.add_argument("--image", help="an image file to search with")
    parser.add_argument("-k", type=int, default=DEFAULT_K, help=f"results (default {DEFAULT_K})")
    parser.add_argument(
        "--in",
        dest="space",
        choices=sorted(KINDS),
        default="image",
        help="search the image embeddings (default) or the caption embeddings",
    )


def embedding_files(out: str, kind: str) -> list[str]:
    """``kind``'s .npy files (or the metadata parquet files) in name order, the faiss id order."""
    suffix = ".parquet" if kind == E.METADATA else ".npy"
    folder = paths.join(out, E.EMBEDDINGS_DIR, kind)
    return [
        u for u in paths.list_files(folder, suffix) if not u.rpartition("/")[2].startswith(".tmp-")
    ]


def load_index(out: str, kind: str) -> tuple[Any, str]:
    """(faiss index, where it came from): autofaiss's file if there is one, else exact."""
    import faiss

    index_dir = paths.join(out, E.EMBEDDINGS_DIR, E.INDEX_DIR)
    built = [
        paths.join(index_dir, E.INDEX_NAMES[kind]),
        *paths.list_files(paths.join(index_dir, kind), ".index"),
    ]
    for uri in built:
        if paths.exists(uri):
            return faiss.read_index(uri), f"autofaiss index {uri}"
    files = embedding_files(out, kind)
    if not files:
        raise UsageError(
            f"no embeddings in {paths.join(out, E.EMBEDDINGS_DIR, kind)}: run "
            "`zhclip score` with --set score.save_embeddings=true first"
        )
    index = None
    for uri in files:
        with paths.open_input(uri) as f:
            matrix = np.load(f, allow_pickle=False).astype(np.float32)
        if index is None:
            index = faiss.IndexFlatIP(matrix.shape[1])
        index.add(matrix)
    return index, f"exact search over {len(files)} file(s) (no index in {index_dir})"


def metadata_rows(out: str, ids: list[int]) -> dict[int, dict[str, Any]]:
    """Metadata rows of global ``ids``, reading only the files that hold them."""
    wanted = sorted(set(ids))
    rows: dict[int, dict[str, Any]] = {}
    start = 0
    for uri in embedding_files(out, E.METADATA):
        with paths.open_input(uri) as f:
            n = pq.ParquetFile(f).metadata.num_rows
        inside = [i for i in wanted if start <= i < start + n]
        if inside:
            with paths.open_input(uri) as f:
                table = pq.read_table(f)
            for i in inside:
                rows[i] = table.slice(i - start, 1).to_pylist()[0]
        start += n
    return rows


def build_query_scorer(out: str) -> Any:
    """The run's own scorer, from the config its manifest recorded."""
    from zhclip.pipeline.score.backends import build_scorer

    manifest = SH.read_manifest(paths.join(out, SH.DATASET_DIR))
    if not manifest.get("embeddings"):
        raise UsageError(
            f"{out} kept no embeddings (manifest.json has no 'embeddings'); rerun "
            "`zhclip score` with --set score.save_embeddings=true"
        )
    return build_scorer(config_from_dict(manifest["config"]).score)


def query_embedding(scorer: Any, text: str | None, image: str | None) -> np.ndarray:
    if text is not None:
        return scorer.embed_texts([text])
    from zhclip.filters import images as I

    with open(image, "rb") as f:
        data = f.read()
    try:
        picture = I.decode_image(data)
    except I.ImageDecodeError as err:
        raise UsageError(f"--image {image}: {err}") from None
    return scorer.embed_images([picture])


def search(
    out: str,
    text: str | None = None,
    image: str | None = None,
    k: int = DEFAULT_K,
    space: str = "image",
) -> tuple[list[dict[str, Any]], str]:
    """Top ``k`` pairs for the query: [{rank, score, key, caption, url, ...}], and the index used."""
    if k < 1:
        raise UsageError("-k must be at least 1")
    if image is not None and not paths.exists(image):
        raise UsageError(f"--image {image}: no such file")
    index, where = load_index(out, KINDS[space])
    scorer = build_query_scorer(out)
    query = np.ascontiguousarray(query_embedding(scorer, text, image), dtype=np.float32)
    if query.shape[1] != index.d:
        raise UsageError(
            f"the scorer gives {query.shape[1]}-d embeddings but the index holds "
            f"{index.d}-d ones; was OUT scored with another model?"
        )
    scores, ids = index.search(query, min(k, index.ntotal))
    found = [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]
    meta = metadata_rows(out, [i for i, _ in found])
    results = [
        {"rank": r + 1, "similarity": round(s, 6), "id": i, **meta[i]}
        for r, (i, s) in enumerate(found)
    ]
    return results, where


def main(args: argparse.Namespace, beam_args: list[str]) -> int:
    results, where = search(args.out, text=args.text, image=args.image, k=args.k, space=args.space)
    print(f"# {where}", file=sys.stderr)
    for r in results:
        print(
            "\t".join(
                terminal_safe(str(v))
                for v in (
                    r["rank"],
                    f"{r['similarity']:.4f}",
                    r["key"],
                    r["caption"],
                    r["url"] or "",
                )
            )
        )
    return 0
