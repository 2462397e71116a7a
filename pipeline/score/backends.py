"""Image-text scorers: ``score(images, captions) -> cosine similarity per pair``.

A scorer is chosen by name from a small registry (``mclip``, ``precomputed``,
``zhclip``; :func:`register_backend` adds more), so the stage-3 job never
branches on the backend. Model-backed scorers import torch lazily inside their
factory: importing this module, or using the ``precomputed`` backend, costs no
torch and no model.

What to do with a score (the per-source threshold) is a rule, so it lives in
:mod:`zhclip.filters.image_rules`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import numpy as np
from PIL import Image
from zhclip.filters.images import OPENAI_MEAN, OPENAI_STD, clip_pixels
from zhclip.pipeline.core.devices import resolve_device


class ScorerError(RuntimeError):
    """A scorer that cannot be built from the config; the message says what to change."""


class PairScorer(Protocol):
    """What the scoring job needs from a backend."""

    name: str
    #: False for backends that never look at pixels (the job then skips preprocessing).
    needs_images: bool

    def preprocess(self, image: Image.Image) -> np.ndarray: ...

    def score(
        self,
        images: Sequence[Any],
        captions: Sequence[str],
        similarity: Sequence[float | None] | None = None,
    ) -> np.ndarray: ...


# --- registry -----------------------------------------------------------------

BackendFactory = Callable[[Any], PairScorer]
_BACKENDS: dict[str, BackendFactory] = {}


def register_backend(name: str) -> Callable[[BackendFactory], BackendFactory]:
    """Decorator: make ``factory(score_config) -> PairScorer`` available as ``name``."""

    def wrap(factory: BackendFactory) -> BackendFactory:
        _BACKENDS[name] = factory
        return factory

    return wrap


def available_backends() -> list[str]:
    return sorted(_BACKENDS)


def build_scorer(score_config: Any) -> PairScorer:
    """Build the scorer named by ``score_config.backend`` (a pipeline.config.ScoreConfig)."""
    name = score_config.backend
    if name not in _BACKENDS:
        raise ScorerError(f"unknown score backend {name!r}; available: {available_backends()}")
    return _BACKENDS[name](score_config)


# --- precomputed -------------------------------------------------------------


@dataclass
class PrecomputedScorer:
    """Uses the source's own similarity column (LAION's crawl-time M-CLIP score); no model."""

    name: str = "precomputed"
    needs_images: bool = False

    def preprocess(self, image: Image.Image) -> np.ndarray:  # pragma: no cover - never called
        raise ScorerError("the precomputed backend does not look at images")

    def score(
        self,
        images: Sequence[Any],
        captions: Sequence[str],
        similarity: Sequence[float | None] | None = None,
    ) -> np.ndarray:
        if similarity is None:
            return np.full(len(captions), np.nan)
        return np.array([np.nan if s is None else float(s) for s in similarity], dtype=np.float64)


@register_backend("precomputed")
def _precomputed(score_config: Any) -> PairScorer:
    return PrecomputedScorer()


# --- embedding scorers (torch) -------------------------------------------------


@dataclass
class EmbeddingPairScorer:
    """Cosine of an image embedding and a text embedding, in fixed-size batches.

    ``image_encoder`` maps a normalised float32 NCHW tensor to embeddings (images
    come as PIL images, uint8 HWC arrays from :meth:`preprocess`, or already
    normalised float CHW arrays), ``text_encoder``
    maps a list of captions to embeddings; both already live on ``device``. On
    CUDA the forward passes run under bf16 autocast, the cosine in float32.
    """

    image_encoder: Any
    text_encoder: Callable[[list[str]], Any]
    device: str = "cpu"
    batch_size: int = 64
    image_size: int = 224
    mean: tuple[float, ...] = OPENAI_MEAN
    std: tuple[float, ...] = OPENAI_STD
    name: str = "embedding"
    needs_images: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    #: When set, ``text_encoder`` takes this function's output instead of captions,
    #: so tokenisation can run ahead on another thread (:meth:`prepare_text`).
    text_tokenizer: Callable[[list[str]], Any] | None = None

    def prepare_text(self, captions: Sequence[str]) -> list[Any] | None:
        """Tokens for :meth:`score`'s ``text=``, cut in the same chunks score() uses
        (padding is per chunk, so the numbers equal tokenising inside score())."""
        if self.text_tokenizer is None:
            return None
        return [self.text_tokenizer(list(captions[i: i + self.batch_size]))
                for i in range(0, len(captions), self.batch_size)]

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """uint8 HWC pixels after resize + center crop; normalised per batch in :meth:`score`."""
        return clip_pixels(image, self.image_size)

    def pixel_function(self) -> Callable[[Image.Image], np.ndarray]:
        """:meth:`preprocess` as a picklable function (no model attached), for decode processes."""
        return partial(clip_pixels, size=self.image_size)

    def _as_array(self, image: Any) -> np.ndarray:
        if isinstance(image, Image.Image):
            return self.preprocess(image)
        return np.asarray(image)

    def score(
        self,
        images: Sequence[Any],
        captions: Sequence[str],
        similarity: Sequence[float | None] | None = None,
        text: list[Any] | None = None,
    ) -> np.ndarray:
        """``text``: :meth:`prepare_text` of these captions, computed ahead (optional)."""
        return self.score_and_embed(images, captions, text=text)[0]

    def score_and_embed(
        self,
        images: Sequence[Any],
        captions: Sequence[str],
        text: list[Any] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(cosine per pair, L2-normalised float32 image and text embeddings): what
        :meth:`score` computes anyway, for stage 3 to keep (``score.save_embeddings``)."""
        if len(images) != len(captions):
            raise ValueError(f"{len(images)} images but {len(captions)} captions")
        out = np.empty(len(captions), dtype=np.float64)
        image_parts, text_parts = [], []
        for n, start in enumerate(range(0, len(captions), self.batch_size)):
            stop = start + self.batch_size
            tokens = text[n] if text is not None else None
            out[start:stop], image_emb, text_emb = self._score_batch(
                images[start:stop], list(captions[start:stop]), tokens)
            image_parts.append(image_emb)
            text_parts.append(text_emb)
        return out, _stack(image_parts), _stack(text_parts)

    def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        """L2-normalised float32 image embeddings (a search query, ``zhclip search --image``)."""
        parts = [self._image_embeddings(images[i: i + self.batch_size]).cpu().numpy()
                 for i in range(0, len(images), self.batch_size)]
        return _stack(parts)

    def embed_texts(self, captions: Sequence[str]) -> np.ndarray:
        """L2-normalised float32 text embeddings (a search query, ``zhclip search --text``)."""
        parts = [self._text_embeddings(list(captions[i: i + self.batch_size])).cpu().numpy()
                 for i in range(0, len(captions), self.batch_size)]
        return _stack(parts)

    def _autocast(self):
        import torch

        return (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.device.startswith("cuda")
            else torch.autocast("cpu", enabled=False)
        )

    def _image_embeddings(self, images: Sequence[Any]) -> Any:
        import torch
        import torch.nn.functional as F

        if isinstance(images, torch.Tensor):  # a batch already on the device (device_decode)
            pixels = images.to(self.device)
        else:
            pixels = torch.from_numpy(np.stack([self._as_array(im) for im in images]))
            pixels = pixels.to(self.device, non_blocking=True)
        if pixels.dtype == torch.uint8:
            # HWC uint8 from preprocess(): same arithmetic as torchvision's ToTensor +
            # Normalize, done on the whole batch.
            pixels = pixels.permute(0, 3, 1, 2)
            mean = torch.tensor(self.mean, device=pixels.device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, device=pixels.device).view(1, -1, 1, 1)
            pixels = (pixels.float() / 255.0 - mean) / std
        with torch.inference_mode(), self._autocast():
            image_emb = self.image_encoder(pixels)
        return F.normalize(image_emb.float(), dim=-1)

    def _text_embeddings(self, captions: list[str], tokens: Any = None) -> Any:
        import torch
        import torch.nn.functional as F

        with torch.inference_mode(), self._autocast():
            if self.text_tokenizer is None:
                text_emb = self.text_encoder(captions)
            else:
                text_emb = self.text_encoder(tokens if tokens is not None
                                             else self.text_tokenizer(captions))
        return F.normalize(text_emb.float(), dim=-1)

    def _score_batch(self, images: Sequence[Any], captions: list[str],
                     tokens: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        image_emb = self._image_embeddings(images)
        text_emb = self._text_embeddings(captions, tokens)
        cosine = (image_emb * text_emb).sum(dim=-1).clamp(-1.0, 1.0)
        return (cosine.cpu().numpy().astype(np.float64), image_emb.cpu().numpy(),
                text_emb.cpu().numpy())


def _stack(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)


@register_backend("mclip")
def _mclip(score_config: Any) -> PairScorer:
    from zhclip.pipeline.score.mclip import load_image_tower, load_mclip_text

    device = resolve_device(score_config.device, key="score.device")
    text = load_mclip_text(score_config.model, device=device)
    image = load_image_tower(score_config.image_model, score_config.image_pretrained, device=device)
    if image.embed_dim != text.embed_dim:
        raise ScorerError(
            f"image tower {score_config.image_model!r} gives {image.embed_dim}-d embeddings but "
            f"text model {score_config.model!r} gives {text.embed_dim}-d; pick the image tower "
            "the M-CLIP checkpoint was distilled against (ViT-B-32 for XLM-Roberta-Large-Vit-B-32)"
        )
    return EmbeddingPairScorer(
        image_encoder=image.module,
        text_encoder=text.encode,
        text_tokenizer=text.tokenize,
        device=device,
        batch_size=score_config.batch_size,
        image_size=image.image_size,
        mean=image.mean,
        std=image.std,
        name="mclip",
    )


@register_backend("zhclip")
def _zhclip(score_config: Any) -> PairScorer:
    """A Chinese CLIP exported by ``zhclip train`` (score.model is the export file).

    Uses ``training.export.load_export(path, device) -> (model, tokenizer,
    transform)``; the model's ``spec`` gives image size and normalisation.
    """
    try:
        from zhclip.training.export import load_export
    except ImportError as err:
        raise ScorerError(
            "score.backend=zhclip needs training.export.load_export (written with `zhclip "
            f"train`), which this install does not provide ({err}); use backend mclip or precomputed"
        ) from None
    device = resolve_device(score_config.device, key="score.device")
    model, tokenizer, _ = load_export(score_config.model, device=device)
    spec = getattr(model, "spec", {}) or {}

    def encode_text(captions: list[str]):
        ids, mask = tokenizer(captions)
        return model.encode_text(ids.to(device), mask.to(device))

    return EmbeddingPairScorer(
        image_encoder=model.encode_image,
        text_encoder=encode_text,
        device=device,
        batch_size=score_config.batch_size,
        image_size=int(spec.get("image_size", 224)),
        mean=tuple(spec.get("mean", OPENAI_MEAN)),
        std=tuple(spec.get("std", OPENAI_STD)),
        name="zhclip",
    )
