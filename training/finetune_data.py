"""Fine-tuning data: every caption of an image as one training pair, and the valid split.

Three layouts, told apart by their files (``--format`` forces one):

- ``chinese-clip``: ``{split}_texts.jsonl`` + ``{split}_imgs.tsv``, as MUGE,
  Flickr30K-CN and COCO-CN are distributed (read and checked by
  :mod:`zhclip.training.benchmarks`); images are read from the TSV by byte
  offset, so a split is never decoded into memory;
- ``lmdb``: ``lmdb/{train,valid}/{imgs,pairs}`` as cn_clip's
  ``build_lmdb_dataset.py`` writes it: ``pairs`` maps ``"0"``, ``"1"``, ... to a
  pickled ``(image_id, text_id, text)`` plus ``num_samples``; ``imgs`` maps
  ``str(image_id)`` to the urlsafe base64 image plus ``num_images``;
- ``shards``: zhclip's final shards (``train`` and ``val``), one caption per image;
  read into memory, so meant for a user's own data of benchmark size.

A text that names an image id missing from the images, an empty split, or an LMDB
that is not cn_clip's stops the run with one line before any step.
"""

from __future__ import annotations

import base64
import io
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from zhclip.training.benchmarks import (
    FORMAT_CHINESE_CLIP,
    FORMAT_SHARDS,
    BenchmarkError,
    RetrievalSet,
    chinese_clip_splits,
    open_image,
    read_chinese_clip,
    read_shards,
)

FORMAT_LMDB = "lmdb"
DATA_FORMATS = (FORMAT_CHINESE_CLIP, FORMAT_LMDB, FORMAT_SHARDS)
LMDB_SAMPLES, LMDB_IMAGES = b"num_samples", b"num_images"  # cn_clip's count keys
VALID_SPLITS = {FORMAT_CHINESE_CLIP: "valid", FORMAT_LMDB: "valid", FORMAT_SHARDS: "val"}


@dataclass
class PairSet:
    """Training pairs (image id, caption) and random access to the images by id."""

    where: str
    pairs: list[tuple[Any, str]]
    images: Any  # an object with get(image_id) -> PIL image, picklable for loader workers


def _b64_image(b64: bytes | str, where: str) -> Image.Image:
    raw = b64.encode() if isinstance(b64, str) else b64
    try:
        data = base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
    except ValueError as err:
        raise BenchmarkError(f"{where}: not base64 ({err})") from err
    return open_image(data, where)


# ---- Chinese-CLIP jsonl + tsv ---------------------------------------------------------


class TsvImages:
    """``{split}_imgs.tsv`` by byte offset: one pass to index, one seek per image."""

    def __init__(self, path: Path):
        self.path = path
        self.offsets: dict[str, int] = {}
        with path.open("rb") as f:
            offset = 0
            for line in f:
                image_id = line.split(b"\t", 1)[0].strip().decode("utf-8")
                if image_id:
                    self.offsets[image_id] = offset
                offset += len(line)

    def get(self, image_id: Any) -> Image.Image:
        with self.path.open("rb") as f:
            f.seek(self.offsets[str(image_id)])
            line = f.readline().rstrip(b"\r\n")
        return _b64_image(line.split(b"\t", 1)[1], f"{self.path} image {image_id}")


def pairs_of(bench: RetrievalSet) -> list[tuple[Any, str]]:
    """Every (image id, caption) the ground truth holds: a caption of k images is k pairs."""
    return [(bench.image_ids[row], text)
            for text, rows in zip(bench.texts, bench.text_to_images, strict=True) for row in rows]


# ---- cn_clip's LMDB ---------------------------------------------------------------------


class _PairUnpickler(pickle.Unpickler):
    """cn_clip pickles plain (image_id, text_id, text) tuples: nothing needs a class, so
    any pickle that asks for one is refused instead of run."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _open_env(path: Path):
    import lmdb

    return lmdb.open(str(path), readonly=True, create=False, lock=False, readahead=False,
                     meminit=False, subdir=True)


def lmdb_split_dir(folder: Path, split: str) -> Path:
    """``folder/lmdb/{split}`` (cn_clip's default ``--lmdb_dir``) or ``folder/{split}``."""
    for candidate in (folder / "lmdb" / split, folder / split):
        if (candidate / "pairs").is_dir() and (candidate / "imgs").is_dir():
            return candidate
    raise BenchmarkError(f"{folder}: no cn_clip LMDB for split {split!r} (expected "
                         f"lmdb/{split}/pairs and lmdb/{split}/imgs)")


def _count(env, key: bytes, where: Path) -> int:
    import lmdb

    try:
        with env.begin() as txn:
            raw = txn.get(key)
    except lmdb.Error as err:
        raise BenchmarkError(f"{where} is not an LMDB written by cn_clip ({err})") from None
    if raw is None or not raw.isdigit():
        raise BenchmarkError(f"{where} is not an LMDB written by cn_clip's build_lmdb_dataset.py "
                             f"(no {key.decode()} count)")
    return int(raw)


def read_lmdb_pairs(split_dir: Path) -> tuple[list[tuple[Any, Any, str]], int]:
    """(image_id, text_id, text) of every pair in write order, and the image count."""
    import lmdb

    try:
        pairs_env, imgs_env = _open_env(split_dir / "pairs"), _open_env(split_dir / "imgs")
    except lmdb.Error as err:
        raise BenchmarkError(f"{split_dir} is not an LMDB written by cn_clip ({err})") from None
    try:
        n_pairs = _count(pairs_env, LMDB_SAMPLES, split_dir / "pairs")
        n_images = _count(imgs_env, LMDB_IMAGES, split_dir / "imgs")
        out = []
        with pairs_env.begin() as txn:
            for i in range(n_pairs):
                raw = txn.get(str(i).encode())
                try:
                    pair = _PairUnpickler(io.BytesIO(raw)).load() if raw is not None else None
                except (pickle.UnpicklingError, EOFError, ValueError) as err:
                    pair = err
                if not (isinstance(pair, tuple) and len(pair) == 3 and isinstance(pair[2], str)):
                    raise BenchmarkError(f"{split_dir / 'pairs'}: pair {i} is not cn_clip's "
                                         "pickled (image_id, text_id, text)")
                out.append(pair)
        with imgs_env.begin() as txn:
            missing = sorted({p[0] for p in out if txn.get(str(p[0]).encode()) is None}, key=str)
    finally:
        pairs_env.close()
        imgs_env.close()
    if missing:
        raise BenchmarkError(f"{split_dir / 'pairs'} names image ids {missing[:5]} that "
                             f"{split_dir / 'imgs'} does not hold")
    if not out:
        raise BenchmarkError(f"{split_dir} holds no pairs")
    return out, n_images


class LmdbImages:
    """cn_clip's ``imgs`` LMDB; opened lazily, so each loader worker opens its own."""

    def __init__(self, path: Path):
        self.path = path
        self._env = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "_env": None}

    def get(self, image_id: Any) -> Image.Image:
        if self._env is None:
            self._env = _open_env(self.path)
        with self._env.begin() as txn:
            b64 = txn.get(str(image_id).encode())
        return _b64_image(b64, f"{self.path} image {image_id}")

    def read(self, image_ids: list[Any]) -> Iterator[Image.Image]:
        for image_id in image_ids:
            yield self.get(image_id)


def lmdb_retrieval(split_dir: Path) -> RetrievalSet:
    """A valid split in LMDB as a retrieval set: its captions (one per text id) against
    its images, in first-seen order."""
    rows, _ = read_lmdb_pairs(split_dir)
    image_ids: list[Any] = []
    row_of: dict[Any, int] = {}
    text_row: dict[Any, int] = {}
    text_ids, texts, gt = [], [], []
    for image_id, text_id, text in rows:
        if image_id not in row_of:
            row_of[image_id] = len(image_ids)
            image_ids.append(image_id)
        if text_id not in text_row:
            text_row[text_id] = len(texts)
            text_ids.append(text_id)
            texts.append(text)
            gt.append([])
        gt[text_row[text_id]].append(row_of[image_id])
    images = LmdbImages(split_dir / "imgs")
    return RetrievalSet(FORMAT_LMDB, image_ids, text_ids, texts, [sorted(set(g)) for g in gt],
                        lambda: images.read(image_ids))


# ---- zhclip shards ----------------------------------------------------------------------


class MemoryImages:
    """Decoded images held by id (a shards split read by ``benchmarks.read_shards``)."""

    def __init__(self, bench: RetrievalSet):
        self.by_id = dict(zip(bench.image_ids, bench.read_images(), strict=True))

    def get(self, image_id: Any) -> Image.Image:
        return self.by_id[image_id]


# ---- layout ------------------------------------------------------------------------------


def detect_data_format(folder: Path) -> str:
    if not folder.is_dir():
        raise BenchmarkError(f"no fine-tuning data folder at {folder}")
    if "train" in chinese_clip_splits(folder):
        return FORMAT_CHINESE_CLIP
    if (folder / "lmdb" / "train").is_dir() or (folder / "train" / "pairs").is_dir():
        return FORMAT_LMDB
    if (folder / "manifest.json").is_file() or any(folder.glob("train/*.tar")):
        return FORMAT_SHARDS
    raise BenchmarkError(
        f"{folder} holds no fine-tuning data: expected train_texts.jsonl + train_imgs.tsv "
        "(Chinese-CLIP), lmdb/train/{pairs,imgs} (cn_clip's LMDB), or zhclip shards")


def read_train_pairs(folder: Path, fmt: str) -> PairSet:
    """The train split as pairs, checked before any step."""
    if fmt == FORMAT_CHINESE_CLIP:
        bench = read_chinese_clip(folder, "train")
        return PairSet(str(folder), pairs_of(bench), TsvImages(folder / "train_imgs.tsv"))
    if fmt == FORMAT_LMDB:
        split_dir = lmdb_split_dir(folder, "train")
        rows, _ = read_lmdb_pairs(split_dir)
        return PairSet(str(split_dir), [(i, t) for i, _, t in rows], LmdbImages(split_dir / "imgs"))
    if fmt == FORMAT_SHARDS:
        bench = read_shards(folder, "train")
        return PairSet(str(folder), pairs_of(bench), MemoryImages(bench))
    raise BenchmarkError(f"unknown fine-tuning data format {fmt!r} (one of {', '.join(DATA_FORMATS)})")


def read_valid(folder: Path, fmt: str, split: str | None = None) -> RetrievalSet | None:
    """The valid split as a retrieval set, or None when the folder has none."""
    split = split or VALID_SPLITS[fmt]
    if fmt == FORMAT_CHINESE_CLIP:
        if split not in chinese_clip_splits(folder):
            return None
        return read_chinese_clip(folder, split)
    if fmt == FORMAT_LMDB:
        try:
            split_dir = lmdb_split_dir(folder, split)
        except BenchmarkError:
            return None
        return lmdb_retrieval(split_dir)
    if not any(folder.glob(f"{split}/*.tar")):
        return None
    return read_shards(folder, split)


# ---- loading ------------------------------------------------------------------------------


class PairDataset(torch.utils.data.Dataset):
    """Index -> (image tensor, caption); indices past the end wrap, as cn_clip pads."""

    def __init__(self, pairs: PairSet, transform: Callable[[Image.Image], torch.Tensor]):
        self.pairs, self.images, self.transform = pairs.pairs, pairs.images, transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        image_id, text = self.pairs[index % len(self.pairs)]
        return self.transform(self.images.get(image_id)), text


class EpochBatches(torch.utils.data.Sampler):
    """One epoch's batches for one rank: the pairs shuffled (seeded by seed and epoch),
    padded up to whole global batches with the first shuffled ones, each global batch
    cut into the ranks' equal slices."""

    def __init__(self, n: int, global_batch: int, rank: int, world: int, seed: int, epoch: int):
        self.n, self.global_batch, self.rank, self.world = n, global_batch, rank, world
        self.seed, self.epoch = seed, epoch

    def __len__(self) -> int:
        return -(-self.n // self.global_batch)

    def __iter__(self) -> Iterator[list[int]]:
        gen = torch.Generator().manual_seed(self.seed * 1000003 + self.epoch)
        order = torch.randperm(self.n, generator=gen).tolist()
        order += order[: len(self) * self.global_batch - self.n]
        share = self.global_batch // self.world
        for b in range(len(self)):
            start = b * self.global_batch + self.rank * share
            yield order[start:start + share]


class CollatePairs:
    """(image tensor, caption) items -> the batch the step takes: images, input_ids,
    attention_mask (a class, so loader workers can receive it)."""

    def __init__(self, tokenizer: Callable):
        self.tokenizer = tokenizer

    def __call__(self, items: list[tuple[torch.Tensor, str]]) -> dict[str, torch.Tensor]:
        ids, mask = self.tokenizer([text for _, text in items])
        return {"images": torch.stack([img for img, _ in items]), "input_ids": ids,
                "attention_mask": mask}


def pair_loader(pairs: PairSet, transform: Callable, tokenizer: Callable, sampler: EpochBatches,
                workers: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(PairDataset(pairs, transform), batch_sampler=sampler,
                                       collate_fn=CollatePairs(tokenizer), num_workers=workers)
