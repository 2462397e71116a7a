"""Readers for evaluation data: retrieval benchmarks and zero-shot image folders.

Retrieval sets come in three layouts, told apart by the files in the folder:

- Chinese-CLIP's, in which MUGE, Flickr30K-CN and COCO-CN are distributed:
  ``{split}_texts.jsonl`` (one caption a line: ``text_id``, ``text``,
  ``image_ids``) and ``{split}_imgs.tsv`` (``image_id<TAB>base64 image``);
- a folder of images with ``captions.tsv`` (``file<TAB>caption``) or
  ``captions.jsonl`` (``{"image": file, "text": caption}``), any number of lines
  per image;
- zhclip's own final shards (a dataset folder with manifest.json, or a split
  folder of ``*.tar``), one caption per image.

Every reader checks the ground truth before a model runs (unknown image ids,
captions without an image, duplicate ids, unreadable lines) and names the file
and line, so a broken benchmark stops with a clear error instead of a skewed score.
Images are streamed in row order, so a large set never sits decoded in memory.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

FORMAT_CHINESE_CLIP = "chinese-clip"
FORMAT_FOLDER = "folder"
FORMAT_SHARDS = "shards"
FORMATS = (FORMAT_CHINESE_CLIP, FORMAT_FOLDER, FORMAT_SHARDS)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
CLASSNAME_FILES = ("classnames.txt", "label_cn.txt")


class BenchmarkError(ValueError):
    """Evaluation data that cannot be read or whose ground truth is inconsistent."""


@dataclass
class RetrievalSet:
    """Captions, image ids and who matches whom; images are read on demand, in row order."""

    format: str
    image_ids: list[Any]
    text_ids: list[Any]
    texts: list[str]
    text_to_images: list[list[int]]  # caption row -> image rows it describes
    read_images: Callable[[], Iterator[Image.Image]] = field(repr=False)

    @property
    def captions_per_image(self) -> float:
        return len(self.texts) / max(1, len(self.image_ids))


@dataclass
class ClassificationSet:
    """An ImageFolder-style set: image paths, their class index, and Chinese class names."""

    paths: list[Path]
    labels: list[int]
    folders: list[str]
    classnames: list[str]

    def read_images(self) -> Iterator[Image.Image]:
        for path in self.paths:
            yield open_image(path.read_bytes(), str(path))


def open_image(data: bytes, where: str) -> Image.Image:
    """Decode to RGB, or raise BenchmarkError naming where the bytes came from."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB")
    except Exception as err:  # PIL raises several unrelated types for bad bytes
        raise BenchmarkError(f"{where}: cannot decode image ({err})") from err


# ---- layout detection -------------------------------------------------------------


def chinese_clip_splits(folder: Path) -> list[str]:
    """Splits with both a texts.jsonl and an imgs.tsv, e.g. ["test", "valid"]."""
    return sorted(p.name[: -len("_texts.jsonl")] for p in folder.glob("*_texts.jsonl")
                  if (folder / p.name.replace("_texts.jsonl", "_imgs.tsv")).is_file())


def detect_format(folder: Path) -> str:
    if not folder.is_dir():
        raise FileNotFoundError(f"no benchmark folder at {folder}")
    if chinese_clip_splits(folder):
        return FORMAT_CHINESE_CLIP
    if (folder / "captions.tsv").is_file() or (folder / "captions.jsonl").is_file():
        return FORMAT_FOLDER
    if (folder / "manifest.json").is_file() or any(folder.glob("*.tar")) or any(folder.glob("*/*.tar")):
        return FORMAT_SHARDS
    raise BenchmarkError(
        f"{folder} holds no retrieval benchmark: expected {{split}}_texts.jsonl + {{split}}_imgs.tsv "
        "(Chinese-CLIP), captions.tsv / captions.jsonl beside images, or zhclip shards")


def read_retrieval(folder: str | Path, fmt: str = "auto", split: str | None = None) -> RetrievalSet:
    """The retrieval set in ``folder``, in the given or detected layout."""
    path = Path(folder)
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == FORMAT_CHINESE_CLIP:
        return read_chinese_clip(path, split)
    if fmt == FORMAT_FOLDER:
        return read_caption_folder(path)
    if fmt == FORMAT_SHARDS:
        return read_shards(path, split or "val")
    raise BenchmarkError(f"unknown benchmark format {fmt!r} (one of auto, {', '.join(FORMATS)})")


# ---- Chinese-CLIP: {split}_texts.jsonl + {split}_imgs.tsv ---------------------------


def _pick_split(folder: Path, split: str | None) -> str:
    splits = chinese_clip_splits(folder)
    if split is None:
        if len(splits) == 1:
            return splits[0]
        raise BenchmarkError(f"{folder} holds splits {', '.join(splits)}: choose one with --split")
    if split not in splits:
        raise BenchmarkError(f"{folder} has no {split}_texts.jsonl + {split}_imgs.tsv "
                             f"(splits found: {', '.join(splits) or 'none'})")
    return split


def _tsv_rows(path: Path) -> Iterator[tuple[int, str, str]]:
    """(line number, image id, base64) of every non-empty line."""
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            image_id, sep, b64 = line.partition("\t")
            if not sep or not image_id:
                raise BenchmarkError(f"{path}:{n}: expected image_id<TAB>base64 image")
            yield n, image_id, b64


def _id(value: str) -> Any:
    """Benchmark ids are integers in every published set; keep other ids as strings."""
    return int(value) if value.lstrip("-").isdigit() else value


def _read_tsv_ids(path: Path) -> list[Any]:
    ids, seen = [], set()
    for n, image_id, _ in _tsv_rows(path):
        key = _id(image_id)
        if key in seen:
            raise BenchmarkError(f"{path}:{n}: image_id {image_id} appears twice")
        seen.add(key)
        ids.append(key)
    if not ids:
        raise BenchmarkError(f"{path} holds no images")
    return ids


def _decode_b64(b64: str, where: str) -> Image.Image:
    try:
        data = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))
    except (binascii.Error, ValueError) as err:
        raise BenchmarkError(f"{where}: not base64 ({err})") from err
    return open_image(data, where)


def _read_texts_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise BenchmarkError(f"{path}:{n}: not JSON ({err})") from err
            missing = [k for k in ("text_id", "text", "image_ids") if k not in obj]
            if missing:
                hint = " (a test split without ground truth?)" if missing == ["image_ids"] else ""
                raise BenchmarkError(f"{path}:{n}: missing {', '.join(missing)}{hint}")
            if not isinstance(obj["image_ids"], list) or not obj["image_ids"]:
                raise BenchmarkError(f"{path}:{n}: image_ids must be a non-empty list")
            rows.append({**obj, "_line": n})
    if not rows:
        raise BenchmarkError(f"{path} holds no captions")
    return rows


def read_chinese_clip(folder: Path, split: str | None = None) -> RetrievalSet:
    """MUGE / Flickr30K-CN / COCO-CN as Chinese-CLIP distributes them."""
    split = _pick_split(folder, split)
    texts_path, imgs_path = folder / f"{split}_texts.jsonl", folder / f"{split}_imgs.tsv"
    image_ids = _read_tsv_ids(imgs_path)
    row_of = {image_id: i for i, image_id in enumerate(image_ids)}
    text_ids, texts, gt, seen = [], [], [], set()
    for obj in _read_texts_jsonl(texts_path):
        where = f"{texts_path}:{obj['_line']}"
        if obj["text_id"] in seen:
            raise BenchmarkError(f"{where}: text_id {obj['text_id']} appears twice")
        seen.add(obj["text_id"])
        unknown = [i for i in obj["image_ids"] if _id(str(i)) not in row_of]
        if unknown:
            raise BenchmarkError(f"{where}: image_ids {unknown[:5]} are not in {imgs_path.name}")
        text_ids.append(obj["text_id"])
        texts.append(str(obj["text"]))
        gt.append(sorted({row_of[_id(str(i))] for i in obj["image_ids"]}))

    def images() -> Iterator[Image.Image]:
        for n, _, b64 in _tsv_rows(imgs_path):
            yield _decode_b64(b64, f"{imgs_path}:{n}")

    return RetrievalSet(FORMAT_CHINESE_CLIP, image_ids, text_ids, texts, gt, images)


# ---- a folder of images with a captions file ----------------------------------------


def _caption_lines(folder: Path) -> Iterator[tuple[str, int, str, str]]:
    """(file:line, line number, image file, caption) from captions.tsv or captions.jsonl."""
    tsv, jsonl = folder / "captions.tsv", folder / "captions.jsonl"
    path = tsv if tsv.is_file() else jsonl
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            if path == tsv:
                name, sep, caption = line.rstrip("\n").partition("\t")
                if not sep:
                    raise BenchmarkError(f"{where}: expected file<TAB>caption")
            else:
                try:
                    obj = json.loads(line)
                    name, caption = obj["image"], obj.get("text", obj.get("caption"))
                except (json.JSONDecodeError, KeyError, TypeError) as err:
                    raise BenchmarkError(f"{where}: expected {{\"image\": ..., \"text\": ...}}") from err
            if not caption or not str(caption).strip():
                raise BenchmarkError(f"{where}: empty caption")
            yield where, n, name, str(caption)


def read_caption_folder(folder: Path) -> RetrievalSet:
    """Images beside a captions file; text ids are caption line numbers, image ids file names."""
    image_ids: list[str] = []
    row_of: dict[str, int] = {}
    text_ids, texts, gt = [], [], []
    for where, n, name, caption in _caption_lines(folder):
        if not (folder / name).is_file():
            raise BenchmarkError(f"{where}: no image file {name} in {folder}")
        if name not in row_of:
            row_of[name] = len(image_ids)
            image_ids.append(name)
        text_ids.append(n)
        texts.append(caption)
        gt.append([row_of[name]])
    if not texts:
        raise BenchmarkError(f"{folder}: the captions file is empty")

    def images() -> Iterator[Image.Image]:
        for name in image_ids:
            yield open_image((folder / name).read_bytes(), str(folder / name))

    return RetrievalSet(FORMAT_FOLDER, image_ids, text_ids, texts, gt, images)


# ---- zhclip's own final shards ----------------------------------------------------------


def read_shards(folder: Path, split: str = "val") -> RetrievalSet:
    """A split of zhclip's final shards: each sample's caption describes its image only."""
    from zhclip.pipeline.core.schema import MEMBER_IMAGE, MEMBER_TEXT
    from zhclip.training.data import _raw_samples, list_shards

    if (folder / "manifest.json").is_file():
        urls = [s.url for s in list_shards(str(folder), split)]
    else:  # a split folder itself, or a dataset folder without its manifest
        tars = sorted(folder.glob("*.tar")) or sorted((folder / split).glob("*.tar"))
        urls = [str(p) for p in tars]
    if not urls:
        raise BenchmarkError(f"{folder}: no {split} shards")
    keys, texts, blobs = [], [], []
    for sample in _raw_samples(urls):
        key = sample.get("__key__")
        if MEMBER_IMAGE not in sample or MEMBER_TEXT not in sample:
            raise BenchmarkError(f"{folder}: sample {key} lacks an image or a caption")
        keys.append(key)
        texts.append(sample[MEMBER_TEXT].decode("utf-8"))
        blobs.append(sample[MEMBER_IMAGE])
    if not keys:
        raise BenchmarkError(f"{folder}: the {split} shards hold no samples")

    def images() -> Iterator[Image.Image]:
        for key, data in zip(keys, blobs, strict=True):
            yield open_image(data, f"{folder}: sample {key}")

    return RetrievalSet(FORMAT_SHARDS, list(keys), list(keys), texts,
                        [[i] for i in range(len(keys))], images)


# ---- zero-shot classification: ImageFolder + Chinese class names ---------------------------


def _classnames(folder: Path, folders: list[str], path: Path | None) -> list[str]:
    """One name a line in sorted-folder order, or ``folder<TAB>name`` lines in any order."""
    if path is None:
        path = next((folder / n for n in CLASSNAME_FILES if (folder / n).is_file()), None)
        if path is None:
            raise BenchmarkError(f"{folder}: no class-name file ({' or '.join(CLASSNAME_FILES)}); "
                                 "pass --classnames FILE")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if lines and all("\t" in ln for ln in lines):
        mapping = dict(ln.split("\t", 1) for ln in lines)
        missing = [f for f in folders if f not in mapping]
        if missing:
            raise BenchmarkError(f"{path}: no name for class folders {missing[:5]}")
        return [mapping[f].strip() for f in folders]
    if len(lines) != len(folders):
        raise BenchmarkError(f"{path}: {len(lines)} class names for {len(folders)} class folders "
                             "(one name a line, in sorted folder order)")
    return lines


def read_image_folder(folder: str | Path, classnames: str | Path | None = None) -> ClassificationSet:
    """``folder/<class>/<image>`` as torchvision's ImageFolder orders it (sorted class folders)."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"no image folder at {folder}")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not folders:
        raise BenchmarkError(f"{root}: no class folders (expected {root}/<class>/<image>)")
    paths, labels = [], []
    for label, name in enumerate(folders):
        files = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise BenchmarkError(f"{root}: the class folders hold no images")
    names = _classnames(root, folders, Path(classnames) if classnames else None)
    return ClassificationSet(paths, labels, folders, names)
