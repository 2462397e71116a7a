"""Streaming the final shards (OUT/dataset) into training and evaluation batches.

The stream is deterministic: which shards a worker reads in an epoch, the
shuffle-buffer order and every sample's augmentation are functions of
(seed, rank, worker, epoch, position). Each batch carries the position of the
last raw sample it used, so a checkpoint can store where every worker stood
and a resumed run continues with exactly the samples (and crops) the
uninterrupted run would have seen.

Workers loop over epochs on their own (a new shard permutation each epoch), so
the DataLoader never runs dry and its round-robin order over workers is fixed.
"""

from __future__ import annotations

import io
import logging
import random
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchvision import transforms as T
from zhclip.pipeline.core.schema import MEMBER_IMAGE, MEMBER_TEXT
from zhclip.pipeline.shards import format as SH
from zhclip.training.tokenizer import CaptionTokenizer

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Shard:
    url: str
    samples: int | None = None


# ---- shard lists -------------------------------------------------------------


def _join(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}" if "://" in root else str(Path(root) / name)


def list_shards(dataset: str | None, split: str, pattern: str | None = None,
                allow_glob: bool = False) -> list[Shard]:
    """The shards of ``split``: from a brace pattern, else manifest.json (else the files if allowed).

    ``pattern`` may be ``train/train-{000000..000099}.tar`` (relative to ``dataset``),
    an absolute pattern or URL, or several joined by ``::``. Without a pattern
    the manifest is the truth: a folder without one may hold a killed or stale
    run, so reading its tars needs ``allow_glob`` (``train.data.glob``), and a
    shard the manifest lists but the folder lacks is an error, not a smaller
    epoch.
    """
    if pattern:
        urls = []
        for part in wds.shardlists.expand_urls(pattern):
            urls.append(part if "://" in part or Path(part).is_absolute() or dataset is None
                        else _join(dataset, part))
        return [Shard(u) for u in urls]
    if dataset is None:
        raise FileNotFoundError("no dataset folder: set train.data.path or the config's output")
    manifest = _join(dataset, SH.MANIFEST_NAME)
    has_manifest = fsspec.core.url_to_fs(manifest)[0].exists(manifest)
    if not has_manifest and not allow_glob:
        raise FileNotFoundError(
            f"{manifest} not found; run `zhclip score` first, set train.data.{split} to a shard "
            "pattern, or set train.data.glob: true to read the folder's tars without a manifest")
    # The one shard lister of the package (pipeline.shards.format): manifest.json
    # first, else the files on disk; split folders and the first, flat layout.
    shards = [Shard(s.tar, s.samples) for s in SH.dataset_shards(dataset, split)]
    if has_manifest:
        _check_listed_shards_exist(manifest, shards)
    if not shards:
        raise FileNotFoundError(f"no {split!r} shards in {dataset} (manifest.json, {split}/{split}-*.tar "
                                f"or {split}-*.tar); run `zhclip score` first or set train.data.{split}")
    return shards


def _check_listed_shards_exist(manifest: str, shards: list[Shard]) -> None:
    fs, _ = fsspec.core.url_to_fs(manifest)
    missing = [s.url for s in shards if not fs.exists(s.url)]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise FileNotFoundError(f"{manifest} lists {len(missing)} shard(s) that are missing: "
                                f"{', '.join(missing[:3])}{more}; rerun `zhclip score`")


def check_shard_count(shards: list[Shard], workers: int, world_size: int, resampled: bool) -> None:
    """Without resampling every worker of every rank needs at least one shard."""
    slots = max(1, workers) * world_size
    if not resampled and len(shards) < slots:
        raise ValueError(
            f"{len(shards)} training shards cannot feed {max(1, workers)} workers x "
            f"{world_size} ranks = {slots} readers; lower train.data.workers, write more "
            "shards (shards.samples_per_shard), or set train.data.resampled: true"
        )


# ---- corpus resolution ---------------------------------------------------------

RESOLUTION_SIDECARS = 8  # sidecars read to measure a corpus (metadata only, no pixels)


def corpus_resolution(dataset: str | None, max_sidecars: int = RESOLUTION_SIDECARS) -> int | None:
    """The median short side of the train images (their width/height columns), or
    None when ``dataset`` is not a local zhclip dataset folder with sidecars."""
    from zhclip.pipeline.shards import format as SH

    if dataset is None or "://" in dataset or not Path(dataset).is_dir():
        return None
    try:
        sidecars = SH.list_dataset_shards(dataset, "train", ext="parquet")[:max_sidecars]
    except FileNotFoundError:
        return None
    sides: list[int] = []
    for uri in sidecars:
        table = SH.read_shard_table(uri)
        sides += [min(w, h) for w, h in zip(table.column("width").to_pylist(),
                                           table.column("height").to_pylist(), strict=True)
                  if w and h]
    if not sides:
        return None
    sides.sort()
    return sides[len(sides) // 2]


def check_resolution(model_size: int, data_size: int | None, allow_upscale: bool) -> None:
    """A model larger than its images trains on upscaled pixels: an error unless forced."""
    if data_size is None or data_size >= model_size or allow_upscale:
        return
    raise ValueError(
        f"the image tower takes {model_size}px images but the corpus's are {data_size}px "
        f"(median short side): training would upscale every image. Download at "
        f"{model_size} (download.image_size) and rescore, or set train.allow_upscale: true"
    )


# ---- transforms -----------------------------------------------------------------


def train_transform(size: int, mean: list[float], std: list[float],
                    crop_scale: tuple[float, float] = (0.9, 1.0),
                    auto_augment: bool = True) -> Callable[[Image.Image], torch.Tensor]:
    """RandomResizedCrop + AutoAugment (ImageNet policy), as in the paper."""
    steps: list[Any] = [T.RandomResizedCrop(size, scale=crop_scale,
                                            interpolation=T.InterpolationMode.BICUBIC)]
    if auto_augment:
        steps.append(T.AutoAugment(T.AutoAugmentPolicy.IMAGENET))
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


def eval_transform(size: int, mean: list[float], std: list[float]) -> Callable[[Image.Image], torch.Tensor]:
    """Resize the short side, then center-crop."""
    return T.Compose([
        T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(size),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def decode_image(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")


# ---- the training stream --------------------------------------------------------


def _rng(*parts: Any) -> random.Random:
    # Seeding with a string is stable across processes and Python runs.
    return random.Random("-".join(str(p) for p in parts))


def _torch_seed(*parts: Any) -> int:
    return _rng(*parts).getrandbits(63)


# Object stores read through fsspec, as everywhere else in zhclip: webdataset's own
# gs:// opener shells out to `gsutil cat`, which needs the Cloud SDK on every
# training machine and ignores STORAGE_EMULATOR_HOST.
_FSSPEC_SCHEMES = ("gs://", "gcs://", "s3://", "memory://")


def _open_shards(urls: list[str], handler: Callable[[Exception], bool]) -> Iterator[dict]:
    for url in urls:
        try:
            if url.startswith(_FSSPEC_SCHEMES):
                stream = fsspec.open(url, "rb").open()
            else:
                stream = wds.gopen(url)
        except Exception as exn:
            exn.args = (*exn.args, url)
            if handler(exn):
                continue
            break
        yield {"url": url, "stream": stream}


def _raw_samples(urls: list[str]) -> Iterator[dict[str, Any]]:
    handler = wds.handlers.warn_and_continue
    files = wds.tariterators.tar_file_expander(_open_shards(urls, handler), handler=handler)
    yield from wds.tariterators.group_by_keys(files, handler=handler)


def _buffer_shuffle(samples: Iterator[dict], size: int, rng: random.Random) -> Iterator[dict]:
    """Shuffle within a buffer of ``size`` samples (a streaming approximation)."""
    if size <= 1:
        yield from samples
        return
    buf: list[dict] = []
    for s in samples:
        if len(buf) < size:
            buf.append(s)
            continue
        i = rng.randrange(len(buf))
        buf[i], s = s, buf[i]
        yield s
    rng.shuffle(buf)
    yield from buf


@dataclass
class StreamSpec:
    """Everything a worker needs to regenerate its part of the stream."""

    shards: list[Shard]
    batch_size: int  # per rank, per optimizer step
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    workers: int = 0
    resampled: bool = False
    shuffle_buffer: int = 1000
    # logical worker -> [epoch, raw samples already used in that epoch]
    start: dict[int, list[int]] = field(default_factory=dict)
    rotation: int = 0  # which logical worker the first batch comes from


class TrainStream(IterableDataset):
    """Infinite batches ``{images, input_ids, attention_mask, keys, position}``."""

    def __init__(self, spec: StreamSpec, transform: Callable, tokenizer: CaptionTokenizer):
        super().__init__()
        self.spec = spec
        self.transform = transform
        self.tokenizer = tokenizer

    def _shards_for(self, logical: int, readers: int, epoch: int) -> list[str]:
        s = self.spec
        urls = [sh.url for sh in s.shards]
        if s.resampled:
            k = max(1, len(urls) // (readers * s.world_size))
            return _rng(s.seed, "resample", s.rank, logical, epoch).choices(urls, k=k)
        order = list(urls)
        _rng(s.seed, "shards", epoch).shuffle(order)  # same permutation on every rank
        slot = s.rank * readers + logical
        return order[slot::readers * s.world_size]

    def _samples(self, logical: int, readers: int
                 ) -> Iterator[tuple[torch.Tensor, str, str, tuple[int, int, int]]]:
        s = self.spec
        epoch, skip = self.spec.start.get(logical, [0, 0])
        while True:
            urls = self._shards_for(logical, readers, epoch)
            raw = _buffer_shuffle(_raw_samples(urls), s.shuffle_buffer,
                                  _rng(s.seed, "buffer", s.rank, logical, epoch))
            produced = 0
            for index, sample in enumerate(raw):
                if index < skip:
                    continue
                position = (logical, epoch, index + 1)
                try:
                    image = decode_image(sample[MEMBER_IMAGE])
                    caption = sample[MEMBER_TEXT].decode("utf-8")
                    with torch.random.fork_rng(devices=[]):
                        torch.manual_seed(_torch_seed(s.seed, "aug", s.rank, logical, epoch, index))
                        pixels = self.transform(image)
                except Exception as err:  # a bad sample is reported and skipped, never fatal
                    warnings.warn(f"skipping sample {sample.get('__key__')} of "
                                  f"{sample.get('__url__')}: {type(err).__name__}: {err}",
                                  stacklevel=1)
                    continue
                produced += 1
                yield pixels, caption, sample["__key__"], position
            if produced == 0 and skip == 0:
                raise RuntimeError(f"worker {logical} read no usable sample from {urls}")
            epoch, skip = epoch + 1, 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        readers = info.num_workers if info else 1
        physical = info.id if info else 0
        logical = (physical + self.spec.rotation) % readers
        images, captions, keys = [], [], []
        for pixels, caption, key, position in self._samples(logical, readers):
            images.append(pixels)
            captions.append(caption)
            keys.append(key)
            if len(images) == self.spec.batch_size:
                ids, mask = self.tokenizer(captions)
                yield {"images": torch.stack(images), "input_ids": ids, "attention_mask": mask,
                       "keys": keys, "position": position}
                images, captions, keys = [], [], []


class DataPosition:
    """Where each logical worker stands, updated from consumed batches only."""

    def __init__(self, workers: int, state: dict[str, Any] | None = None):
        self.readers = max(1, workers)
        self.positions: dict[int, list[int]] = {}
        self.next = 0
        self.batches = 0
        if state:
            if state.get("readers") != self.readers:
                log.warning("data position saved with %s workers, now %s: the stream restarts "
                            "from the furthest epoch", state.get("readers"), self.readers)
                far = max((p[0] for p in state["positions"].values()), default=0)
                self.positions = {w: [far + 1, 0] for w in range(self.readers)}
            else:
                self.positions = {int(k): list(v) for k, v in state["positions"].items()}
                self.next = int(state["next"])
            self.batches = int(state.get("batches", 0))

    def update(self, position: tuple[int, int, int]) -> None:
        logical, epoch, used = (int(x) for x in position)
        self.positions[logical] = [epoch, used]
        self.next = (logical + 1) % self.readers
        self.batches += 1

    def state(self) -> dict[str, Any]:
        return {"readers": self.readers, "positions": self.positions, "next": self.next,
                "batches": self.batches}


def train_loader(spec: StreamSpec, transform: Callable, tokenizer: CaptionTokenizer,
                 position: DataPosition, pin_memory: bool = False,
                 prefetch: int | None = None) -> DataLoader:
    """A DataLoader that resumes at ``position``.

    ``prefetch`` batches per worker stay decoded ahead of the step (workers > 0
    only; the position still counts batches the trainer took, so a resume does
    not skip the prefetched ones)."""
    check_shard_count(spec.shards, spec.workers, spec.world_size, spec.resampled)
    spec.start = {k: list(v) for k, v in position.positions.items()}
    spec.rotation = position.next
    return DataLoader(TrainStream(spec, transform, tokenizer), batch_size=None,
                      num_workers=spec.workers, pin_memory=pin_memory,
                      prefetch_factor=prefetch if spec.workers > 0 else None,
                      persistent_workers=False)


# ---- the evaluation stream ------------------------------------------------------


class EvalStream(IterableDataset):
    """One pass over the val shards, split across workers, no shuffling."""

    def __init__(self, shards: list[Shard], transform: Callable, tokenizer: CaptionTokenizer,
                 batch_size: int, max_samples: int | None = None):
        super().__init__()
        self.urls = [s.url for s in shards]
        self.transform = transform
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_samples = max_samples

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        urls = self.urls[info.id::info.num_workers] if info else self.urls
        limit = None
        if self.max_samples is not None:
            n = info.num_workers if info else 1
            wid = info.id if info else 0
            limit = self.max_samples // n + (1 if wid < self.max_samples % n else 0)
        images, captions, count = [], [], 0
        for sample in _raw_samples(urls):
            if limit is not None and count >= limit:
                break
            try:
                pixels = self.transform(decode_image(sample[MEMBER_IMAGE]))
                caption = sample[MEMBER_TEXT].decode("utf-8")
            except Exception as err:
                warnings.warn(f"eval: skipping sample {sample.get('__key__')}: {err}", stacklevel=1)
                continue
            count += 1
            images.append(pixels)
            captions.append(caption)
            if len(images) == self.batch_size:
                ids, mask = self.tokenizer(captions)
                yield {"images": torch.stack(images), "input_ids": ids, "attention_mask": mask}
                images, captions = [], []
        if images:
            ids, mask = self.tokenizer(captions)
            yield {"images": torch.stack(images), "input_ids": ids, "attention_mask": mask}


def eval_loader(shards: list[Shard], transform: Callable, tokenizer: CaptionTokenizer,
                batch_size: int, workers: int, max_samples: int | None = None) -> DataLoader:
    return DataLoader(EvalStream(shards, transform, tokenizer, batch_size, max_samples),
                      batch_size=None, num_workers=min(workers, len(shards)))
