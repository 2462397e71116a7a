"""One-call loaders for a zhclip dataset folder (OUT/dataset).

    from zhclip.pipeline.shards.loading import load_hf_dataset, ZhclipIterableDataset, webdataset_urls

    ds = datasets.load_dataset("runs/demo/dataset")                     # the dataset card: both splits
    ds = load_hf_dataset("runs/demo/dataset", split="train")            # datasets, webdataset builder:
                                                                         #   jpg (PIL), txt, json columns
    meta = load_hf_dataset("runs/demo/dataset", builder="parquet")      # sidecars: metadata only
    it = ZhclipIterableDataset("runs/demo/dataset", transform=preprocess)  # torch, shards split
                                                                         #   over ranks and workers
    wds.WebDataset(webdataset_urls("runs/demo/dataset", "train"))       # plain webdataset

The shard list comes from manifest.json, so a loader never reads a half
written or stale file that happens to sit in the folder.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import IterableDataset
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.shards import format as SH

BUILDERS = ("webdataset", "parquet")


def webdataset_urls(folder: str, split: str = SH.SPLIT_TRAIN) -> list[str]:
    """Tar paths of ``split`` in manifest order, for ``webdataset.WebDataset(urls)``."""
    urls = SH.list_dataset_shards(folder, split)
    if not urls:
        raise FileNotFoundError(f"no {split} shards in {folder}")
    return urls


def load_hf_dataset(folder: str, split: str = SH.SPLIT_TRAIN, builder: str = "webdataset",
                    streaming: bool = False, **kwargs: Any):
    """``datasets.load_dataset`` over the shards of one split.

    ``builder="webdataset"`` gives one row per sample with ``jpg`` (PIL image),
    ``txt`` and ``json`` columns; ``builder="parquet"`` gives the sidecar
    metadata (DATASET_SCHEMA columns) without pixels, fast to filter or count.
    """
    import datasets

    if builder not in BUILDERS:
        raise ValueError(f"builder must be one of {BUILDERS}, got {builder!r}")
    ext = "tar" if builder == "webdataset" else "parquet"
    files = SH.list_dataset_shards(folder, split, ext=ext)
    if not files:
        raise FileNotFoundError(f"no {split} shards in {folder}")
    if builder == "webdataset" and "features" not in kwargs:
        # Without explicit features the builder guesses the json types from the
        # first samples, and a shard whose scores start as null then fails on
        # the first real score ("cannot cast double to null").
        kwargs["features"] = webdataset_features()
    return datasets.load_dataset(builder, data_files={split: files}, split=split,
                                 streaming=streaming, **kwargs)


def webdataset_features():
    """``datasets.Features`` of one final-shard sample, as the dataset card declares them."""
    import datasets
    from zhclip.pipeline.shards import card

    json_fields = {name: datasets.Value(dtype) for name, dtype in card.json_fields()}
    return datasets.Features({S.MEMBER_IMAGE: datasets.Image(), S.MEMBER_TEXT: datasets.Value("string"),
                              S.MEMBER_JSON: json_fields, card.WDS_KEY: datasets.Value("string"),
                              card.WDS_URL: datasets.Value("string")})


class ZhclipIterableDataset(IterableDataset):
    """Samples of a zhclip dataset as a torch IterableDataset.

    Yields ``{"image": PIL or transform(PIL), "caption": str, "meta": dict}``.
    Shards are dealt round-robin to (rank, dataloader worker) pairs, so each
    sample is read once per epoch across a distributed job; ``shuffle_shards``
    with ``seed`` and :meth:`set_epoch` reorders shards per epoch.
    """

    def __init__(self, folder: str, split: str = SH.SPLIT_TRAIN,
                 transform: Callable[[Any], Any] | None = None,
                 rank: int = 0, world_size: int = 1, shuffle_shards: bool = False,
                 seed: int = 0) -> None:
        super().__init__()
        self.urls = webdataset_urls(folder, split)
        self.transform = transform
        self.rank, self.world_size = rank, world_size
        self.shuffle_shards, self.seed, self.epoch = shuffle_shards, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shards_for_this_worker(self) -> list[str]:
        import random

        from torch.utils.data import get_worker_info

        urls = list(self.urls)
        if self.shuffle_shards:
            random.Random(self.seed + self.epoch).shuffle(urls)
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        slot, slots = self.rank * workers + worker, self.world_size * workers
        return urls[slot::slots]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from PIL import Image

        for url in self.shards_for_this_worker():
            for sample in SH.iter_shard(url):
                image = Image.open(io.BytesIO(sample.image)).convert("RGB")
                if self.transform is not None:
                    image = self.transform(image)
                meta = {k: v for k, v in sample.meta.items() if k != S.CAPTION}
                yield {"image": image, "caption": sample.caption, "meta": meta}
