"""Stage 3's per-shard work, without Beam: decode, score, and judge each sample.

:class:`ShardScorer` turns one download shard into a :class:`ShardResult`
(kept records, reject rows, funnel counts, score histograms). The rules it
applies are :mod:`zhclip.filters.image_rules`; the DoFn in
:mod:`zhclip.pipeline.score.job` only routes the result to Beam outputs, and
the benchmark calls the same code without a runner.

Batches are cut inside a shard in key order, so a pair's score does not
depend on how the runner bundled elements.
"""

from __future__ import annotations

import io
import math
import multiprocessing
import os
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm
from zhclip.filters import image_rules
from zhclip.filters import images as I
from zhclip.pipeline.core import reasons as RS
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.score import embeddings as E
from zhclip.pipeline.score.safety import load_safety_model
from zhclip.pipeline.shards import downloads as DL
from zhclip.pipeline.shards import format as SH

STAGE = "score"
# Score histogram: fixed bins over the cosine range, so runs can be compared.
HIST_BINS = 200
HIST_RANGE = (-1.0, 1.0)
SCORE_DECIMALS = 6
MAX_NOTES = 200
# Key of a kept record's image bytes (moved to a spill file before any shuffle).
IMAGE = "image"
# Key of a kept record's 64-bit perceptual hash (near-duplicate grouping).
PHASH = "phash"
# Key of a kept record's coarse colour layout (near-duplicates must match it too).
COLOUR = "colour"


def reject_row(sample: DL.DownloadedSample, reason: str) -> dict[str, Any]:
    return {
        S.KEY: sample.key,
        S.SOURCE: sample.source,
        S.URL: sample.url,
        S.CAPTION: sample.caption,
        S.REASON: reason,
        S.STAGE: STAGE,
    }


class PreparedSample:
    """A decoded download: JPEG bytes and hashes for the shards, pixels for the model."""

    __slots__ = ("sample", "jpeg", "sha256", "width", "height", "pixels", "phash", "colour", "error",
                 "reason")

    def __init__(self, sample: DL.DownloadedSample) -> None:
        self.sample = sample
        self.jpeg: bytes = b""
        self.sha256 = ""
        self.width = self.height = 0
        self.pixels: np.ndarray | None = None
        self.phash: int | None = None
        self.colour: bytes | None = None
        self.error: str | None = None
        self.reason: str | None = None  # a reject reason found while preparing (bad_region)


def region_box(sample: DL.DownloadedSample) -> tuple | None:
    """The (x, y, w, h) region box a region-level pair carries, or None for whole-image pairs."""
    meta = sample.meta or {}
    box = tuple(meta.get(c) for c in (S.REGION_X, S.REGION_Y, S.REGION_W, S.REGION_H))
    return None if all(v is None for v in box) else box


def crop_to_region(sample: DL.DownloadedSample, image: Any, box: tuple) -> Any | None:
    """The stored image cropped to ``box`` (scaled from the source's size), or None if empty."""
    meta = sample.meta or {}
    pixels = image_rules.scaled_box(
        box, (meta.get(S.SOURCE_WIDTH), meta.get(S.SOURCE_HEIGHT)),
        (meta.get(S.ORIGINAL_WIDTH), meta.get(S.ORIGINAL_HEIGHT)), image.size)
    return None if pixels is None else image.crop(pixels)


def _encode_jpeg(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=I.JPEG_QUALITY)
    return buf.getvalue()


def prepare_sample(sample: DL.DownloadedSample, preprocess: Callable[[Any], Any] | None,
                   want_phash: bool) -> PreparedSample:
    """Decode one sample; a decode failure is recorded on the result, never raised.

    A region-level pair (Visual Genome ``mode: regions``) is cropped to its box
    here, so the crop is what is stored, hashed and scored, never the whole image.
    """
    out = PreparedSample(sample)
    try:
        image = I.decode_image(sample.image or b"")
        box = region_box(sample)
        if box is not None:
            image = crop_to_region(sample, image, box)
            if image is None:
                out.reason = RS.REASON_BAD_REGION
                return out
            out.jpeg = _encode_jpeg(image)
        else:
            out.jpeg = I.to_jpeg_bytes(sample.image, image)
    except I.ImageDecodeError as err:
        out.error = str(err)
        return out
    out.sha256 = I.sha256_hex(out.jpeg)
    out.width, out.height = image.size
    if want_phash:  # a flat picture's hash is noise: blank_image, before it is scored or grouped
        out.reason, out.phash, out.colour = image_rules.image_signature(image)
        if out.reason is not None:
            return out
    if preprocess is not None:
        out.pixels = preprocess(image)
    return out


def prepare_for_device(sample: DL.DownloadedSample) -> PreparedSample | None:
    """A JPEG the device will decode: bytes, hash and size from the header, no CPU decode.

    ``None`` when the sample needs the CPU path (not a device-decodable JPEG).
    """
    from zhclip.pipeline.score.device_decode import device_decodable, read_jpeg_header

    data = sample.image or b""
    if not device_decodable(data):
        return None
    header = read_jpeg_header(data)
    out = PreparedSample(sample)
    out.jpeg, out.sha256 = data, I.sha256_hex(data)
    out.width, out.height = header.width, header.height
    return out


def prepare_chunk(samples: list[DL.DownloadedSample], preprocess: Callable[[Any], Any] | None,
                  want_phash: bool) -> list[PreparedSample]:
    """:func:`prepare_sample` over a slice of a batch; module-level so worker processes can run it."""
    return [prepare_sample(s, preprocess, want_phash) for s in samples]


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def resolve_decode_workers(setting: int | None) -> int:
    """``score.decode_workers``: an explicit count wins; ``None`` gives the cores torch leaves free.

    torch is only consulted when already imported (a model-backed scorer was
    built); the precomputed backend never pulls it in.
    """
    if setting is not None:
        return setting
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch is not None else 1
    return max(0, usable_cores() - threads)


def split_even(items: list[Any], parts: int) -> list[list[Any]]:
    """Contiguous, order-keeping slices of nearly equal size (no empty slice)."""
    parts = max(1, min(parts, len(items)))
    step, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + step + (1 if i < extra else 0)
        out.append(items[start:stop])
        start = stop
    return out


def histogram(scores: list[float]) -> list[int]:
    counts, _ = np.histogram(np.asarray(scores, dtype=np.float64), bins=HIST_BINS, range=HIST_RANGE)
    return counts.astype(int).tolist()


def split_key(sample: DL.DownloadedSample) -> str:
    """What the train/val split is drawn by: the image (its URL), not the caption.

    COCO, Visual Genome and LAION give one image several captions, each its own
    sample; hashing the sample key would put some of them in train and the rest in
    val, so val would test on images the model trained on. A sample without a URL
    falls back to its key.
    """
    return sample.url or sample.key


def kept_record(p: PreparedSample, score: float | None, val_fraction: float) -> dict[str, Any]:
    """A sample that passed every per-sample rule, as it travels to the writer."""
    s = p.sample
    return {
        S.KEY: s.key,
        S.SOURCE: s.source,
        S.URL: s.url,
        S.CAPTION: s.caption or "",
        S.CAPTION_ORIG: s.caption_orig,
        S.SCORE: score,
        S.WIDTH: p.width,
        S.HEIGHT: p.height,
        S.SHA256: p.sha256,
        PHASH: p.phash,
        COLOUR: p.colour,
        IMAGE: p.jpeg,
        S.SPLIT: SH.split_for_key(split_key(s), val_fraction),
    }


@dataclass
class ShardResult:
    """Everything one download shard yields: kept records (with image bytes),
    reject rows, funnel counts (report shape) and the histogram/notes part."""

    kept: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    scores: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def reject(self, sample: DL.DownloadedSample, reason: str) -> None:
        self.counts[sample.source][reason] += 1
        self.rejects.append(reject_row(sample, reason))

    def funnel_counts(self) -> dict[str, dict[str, Any]]:
        return {src: {"rows_in": c.get("rows_in", 0), "kept": 0,
                      "reasons": {r: n for r, n in c.items() if r != "rows_in"}}
                for src, c in self.counts.items()}


class ShardScorer:
    """Scores download shards with one scorer; decoding of batch i+1 overlaps
    the model's work on batch i.

    One feeder thread prepares the next batch. With ``score.decode_workers`` > 0
    it hands slices of that batch to worker processes (decode and resize are
    CPU-bound and hold the GIL in parts, so threads would compete with the
    model); with 0 it decodes in the thread itself. Both run the same
    :func:`prepare_sample`, so results and bytes written do not depend on it.
    """

    def __init__(self, scorer: Any, score_cfg: Any, val_fraction: float,
                 eval_hashes: list[int], *, thresholds: Mapping[str, float],
                 device_decode: bool | None = None) -> None:
        """``thresholds`` maps source *names* to their minimum score, resolved from
        the config's kind and name keys by :func:`~zhclip.pipeline.score.thresholds.plan_thresholds`
        (``score_cfg.thresholds`` itself may be keyed by kind).

        ``device_decode`` (default: on when the scorer runs on CUDA) decodes JPEGs
        on the scorer's device in batches (:mod:`~zhclip.pipeline.score.device_decode`);
        decontamination needs PIL's pixels for the hash, so it turns it off."""
        self.scorer = scorer
        self.cfg = score_cfg
        self.thresholds = dict(thresholds)
        self.val_fraction = val_fraction
        self.eval_index = I.phash_index(eval_hashes)
        self.want_phash = bool(eval_hashes) or bool(getattr(score_cfg, "near_duplicates", False))
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zhclip-decode")
        self._preprocess = self._picklable_preprocess()
        workers = resolve_decode_workers(getattr(score_cfg, "decode_workers", 0))
        # A scorer whose preprocess cannot travel to another process decodes in-thread.
        self.decode_workers = workers if self._preprocess is not False else 0
        self._procs: ProcessPoolExecutor | None = None
        self.device_decode = self._want_device_decode(device_decode)
        self.pairs_scored = 0
        self.safety = load_safety_model(getattr(score_cfg, "safety", None))  # score.safety, or None
        # Kept records carry their float16 embeddings (embeddings.py writes them per shard).
        self.save_embeddings = bool(getattr(score_cfg, "save_embeddings", False))
        if self.save_embeddings and not hasattr(scorer, "score_and_embed"):
            raise ValueError(f"score.save_embeddings: the {scorer.name!r} scorer computes no "
                             "embeddings; set score.save_embeddings=false")

    def _want_device_decode(self, asked: bool | None) -> bool:
        if self.want_phash or not self.scorer.needs_images or not hasattr(self.scorer, "pixel_function"):
            return False
        if asked is not None:
            return asked
        from zhclip.pipeline.score.device_decode import device_decode_wanted

        return device_decode_wanted(str(getattr(self.scorer, "device", "cpu")))

    def _picklable_preprocess(self) -> Callable[[Any], Any] | None | bool:
        """The preprocess function worker processes get; ``False`` when there is none to send."""
        if not self.scorer.needs_images:
            return None
        make = getattr(self.scorer, "pixel_function", None)
        return make() if make is not None else False

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        if self._procs is not None:
            self._procs.shutdown(wait=True, cancel_futures=True)
            self._procs = None

    def _workers(self) -> ProcessPoolExecutor:
        # spawn, not fork: the parent holds torch's thread pools and the feeder thread.
        if self._procs is None:
            self._procs = ProcessPoolExecutor(self.decode_workers,
                                              mp_context=multiprocessing.get_context("spawn"))
        return self._procs

    def _prepare_with_text(self, batch: list[DL.DownloadedSample]) -> tuple[
            list[PreparedSample], tuple[list[str], Any] | None]:
        """Decode the batch and tokenise the captions that will be scored, on the feeder thread.

        A sample found undecodable later (on the device) changes the scored list;
        the tokens then no longer match and the scorer tokenises itself.
        """
        prepared = self._prepare(batch)
        make = getattr(self.scorer, "prepare_text", None)
        if make is None:
            return prepared, None
        captions = [p.sample.caption or "" for p in prepared if p.error is None
                    and image_rules.overlap_reason(p.phash, self.eval_index, self.cfg.phash_distance) is None]
        tokens = make(captions) if captions else None
        return prepared, (captions, tokens) if tokens is not None else None

    def _prepare(self, batch: list[DL.DownloadedSample]) -> list[PreparedSample]:
        if self.device_decode:
            light = [prepare_for_device(s) for s in batch]
            rest = self._prepare_cpu([s for s, p in zip(batch, light, strict=True) if p is None])
            it = iter(rest)
            return [p if p is not None else next(it) for p in light]
        return self._prepare_cpu(batch)

    def _prepare_cpu(self, batch: list[DL.DownloadedSample]) -> list[PreparedSample]:
        if not batch:
            return []
        if self.decode_workers == 0:
            preprocess = self.scorer.preprocess if self.scorer.needs_images else None
            return prepare_chunk(batch, preprocess, self.want_phash)
        chunks = split_even(batch, self.decode_workers)
        futures = [self._workers().submit(prepare_chunk, c, self._preprocess, self.want_phash)
                   for c in chunks]
        return [p for f in futures for p in f.result()]

    def score_shard(self, shard: DL.DownloadShard) -> tuple[ShardResult, DL.DownloadShardContents]:
        contents = DL.read_download_shard(shard)
        result = ShardResult()
        usable = []
        for sample in contents.samples:
            result.counts[sample.source]["rows_in"] += 1
            if sample.problem:
                result.reject(sample, sample.problem)
            else:
                usable.append(sample)
        size = self.cfg.batch_size
        batches = [usable[i: i + size] for i in range(0, len(usable), size)]
        pending = self._pool.submit(self._prepare_with_text, batches[0]) if batches else None
        progress = tqdm(total=len(usable), desc=f"score {shard.name}", unit="pair", leave=False,
                        disable=None, mininterval=2.0)
        for i in range(len(batches)):
            prepared, text = pending.result()
            if i + 1 < len(batches):
                pending = self._pool.submit(self._prepare_with_text, batches[i + 1])
            self._score_batch(prepared, result, text)
            progress.update(len(prepared))
        progress.close()
        return result, contents

    def _device_pixels(self, ok: list[PreparedSample], result: ShardResult) -> tuple[
            list[PreparedSample], Any]:
        """Decode the batch on the scorer's device; files it rejects take the PIL path.

        A file the device cannot decode is prepared again on the CPU exactly as
        the plain path would, so its record and its reject reason are the same.
        """
        from zhclip.pipeline.score.device_decode import decode_batch

        preprocess = self.scorer.preprocess

        def cpu_pixels(i: int):
            p = ok[i]
            if p.pixels is None:
                ok[i] = p = prepare_sample(p.sample, preprocess, False)
            return None if p.error else p.pixels

        sc = self.scorer
        # The downloaded bytes, not p.jpeg: a PNG's stored JPEG is a lossy re-encode.
        batch, _, failed = decode_batch([p.sample.image or b"" for p in ok],
                                        sc.image_size, sc.mean, sc.std, sc.device, cpu_pixels)
        bad = set(failed)
        for i in sorted(bad):
            result.reject(ok[i].sample, image_rules.decode_reason(ok[i].error or "undecodable"))
        return [p for i, p in enumerate(ok) if i not in bad], batch

    def _score_batch(self, prepared: list[PreparedSample], result: ShardResult,
                     text: tuple[list[str], Any] | None = None) -> None:
        """``text``: (captions, tokens) the feeder thread made for this batch, or None."""
        ok = []
        for p in prepared:
            reason = (p.reason or image_rules.decode_reason(p.error)
                      or image_rules.overlap_reason(p.phash, self.eval_index, self.cfg.phash_distance))
            if reason is not None:
                result.reject(p.sample, reason)
            else:
                ok.append(p)
        if self.device_decode:
            ok, images = self._device_pixels(ok, result)
        else:
            images = [p.pixels for p in ok]
        if not ok:
            return
        captions = [p.sample.caption or "" for p in ok]
        extra = {}
        if text is not None and text[0] == captions:  # tokens made ahead match what is scored
            extra["text"] = text[1]
        embedded = None
        if self.save_embeddings:
            values, *embedded = self.scorer.score_and_embed(images, captions, **extra)
        else:
            values = self.scorer.score(
                images,
                captions,
                similarity=[p.sample.similarity for p in ok],
                **extra,
            )
        self.pairs_scored += len(ok)
        start = len(result.kept)
        for j, (p, value) in enumerate(zip(ok, values, strict=True)):
            score = None if math.isnan(value) else round(float(value), SCORE_DECIMALS)
            if score is not None:
                result.scores[p.sample.source].append(score)
            reason = image_rules.threshold_reason(p.sample.source, score, self.thresholds)
            if reason is not None:
                result.reject(p.sample, reason)
            else:
                record = kept_record(p, score, self.val_fraction)
                if embedded is not None:
                    record.update(E.record_fields(embedded[0][j], embedded[1][j]))
                result.kept.append(record)
        if self.safety is not None:
            self.safety.judge(result, start)
