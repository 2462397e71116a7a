"""Any benchmark `zhclip eval` reads, written in CLIP_benchmark's webdataset layout.

CLIP_benchmark (``clip_benchmark eval --dataset wds/NAME --dataset_root DIR``) reads::

    DIR/{split}/0.tar .. {n-1}.tar   samples: KEY.png + KEY.txt (retrieval: one caption a line)
                                               or KEY.png + KEY.cls (classification: class index)
    DIR/{split}/nshards.txt          n
    DIR/dataset_type.txt             "retrieval" or "classification"
    DIR/classnames.txt               classification: one name a line, in class-index order
    DIR/zeroshot_classification_templates.txt   one template a line, ``{c}`` for the name

Images are written as PNG from the pixels zhclip decodes, so both tools see the
same pixels whatever the source encoding. Where the two layouts cannot say the
same thing, the writer keeps CLIP_benchmark's meaning and counts what changed:
a caption that describes several images is written under each of them (CLIP_benchmark
then asks it once per image, zhclip once in all), and an image no caption describes
is written with an empty caption list (CLIP_benchmark counts it as an image-to-text
miss; zhclip leaves it out of image-to-text and keeps it as a distractor).
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from PIL import Image

SAMPLES_PER_SHARD = 1000
TYPE_RETRIEVAL, TYPE_CLASSIFICATION = "retrieval", "classification"
CB_PLACEHOLDER = "{c}"  # CLIP_benchmark's templates; zhclip's use "{}"


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed metadata: reruns are identical
    tar.addfile(info, io.BytesIO(data))


def _write_shards(
    root: Path, split: str, samples: Iterable[tuple[Image.Image, str, bytes]], per_shard: int
) -> int:
    """(image, member suffix, member bytes) per sample -> numbered tars; returns the count."""
    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.tar"):
        old.unlink()  # a shorter rewrite must not leave stale shards behind nshards.txt
    n, tar, shard = 0, None, -1
    try:
        for image, suffix, payload in samples:
            if n % per_shard == 0:
                if tar is not None:
                    tar.close()
                shard += 1
                tar = tarfile.open(folder / f"{shard}.tar", "w")
            key = f"{n:08d}"  # CLIP_benchmark splits member names at the first dot
            _add(tar, f"{key}.png", _png(image))
            _add(tar, f"{key}.{suffix}", payload)
            n += 1
    finally:
        if tar is not None:
            tar.close()
    (folder / "nshards.txt").write_text(f"{shard + 1}\n", encoding="utf-8")
    return n


def _one_line(text: str) -> str:
    return " ".join(text.split())  # a caption is one line of the .txt member


def write_retrieval(
    bench: Any, out: str | Path, split: str = "test", per_shard: int = SAMPLES_PER_SHARD
) -> dict[str, int]:
    """Write a ``benchmarks.RetrievalSet``; returns what was written and what changed meaning."""
    root = Path(out)
    captions: list[list[str]] = [[] for _ in bench.image_ids]
    shared = 0
    for text, rows in zip(bench.texts, bench.text_to_images, strict=True):
        shared += len(rows) > 1
        for row in rows:
            captions[row].append(_one_line(text))

    def samples() -> Iterator[tuple[Image.Image, str, bytes]]:
        for image, caps in zip(bench.read_images(), captions, strict=True):
            yield image, "txt", "\n".join(caps).encode("utf-8")

    n = _write_shards(root, split, samples(), per_shard)
    (root / "dataset_type.txt").write_text(TYPE_RETRIEVAL + "\n", encoding="utf-8")
    return {
        "images": n,
        "captions": sum(map(len, captions)),
        "images_without_caption": sum(not c for c in captions),
        "captions_on_several_images": shared,
    }


def write_classification(
    data: Any,
    templates: list[str],
    out: str | Path,
    split: str = "test",
    per_shard: int = SAMPLES_PER_SHARD,
) -> dict[str, int]:
    """Write a ``benchmarks.ClassificationSet`` with its class names and zhclip's templates."""
    from zhclip.training.zeroshot import PLACEHOLDER

    root = Path(out)

    def samples() -> Iterator[tuple[Image.Image, str, bytes]]:
        for image, label in zip(data.read_images(), data.labels, strict=True):
            yield image, "cls", str(int(label)).encode()

    n = _write_shards(root, split, samples(), per_shard)
    (root / "dataset_type.txt").write_text(TYPE_CLASSIFICATION + "\n", encoding="utf-8")
    (root / "classnames.txt").write_text(
        "".join(_one_line(c) + "\n" for c in data.classnames), encoding="utf-8"
    )
    (root / "zeroshot_classification_templates.txt").write_text(
        "".join(t.replace(PLACEHOLDER, CB_PLACEHOLDER) + "\n" for t in templates), encoding="utf-8"
    )
    return {"images": n, "classes": len(data.classnames), "templates": len(templates)}
