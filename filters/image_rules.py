"""Stage 3's per-sample rules: decode failure, test-set overlap, the score
threshold, and the key that groups identical images.

Pure functions, no Beam or torch: the score stage decodes and scores, then
asks these what to do with each sample, exactly as stage 1 asks
:mod:`zhclip.filters.rules`. Each returns a reject reason, or None to keep.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from zhclip.filters.images import min_hamming
from zhclip.pipeline.core.reasons import (
    REASON_DECODE_ERROR,
    REASON_LOW_SIMILARITY,
    REASON_TEST_OVERLAP,
)

# Separates the image hash from the caption in url_caption dedup keys.
_KEY_SEP = "\x1f"


def decode_reason(error: str | None) -> str | None:
    """``decode_error`` when the image could not be decoded."""
    return REASON_DECODE_ERROR if error is not None else None


def overlap_reason(phash: int | None, eval_index: np.ndarray, max_distance: int) -> str | None:
    """``test_overlap`` when the image is a near-duplicate of an evaluation image.

    ``phash`` is None when no evaluation set was given (nothing to compare).
    """
    if phash is None or len(eval_index) == 0:
        return None
    return REASON_TEST_OVERLAP if min_hamming(phash, eval_index) <= max_distance else None


def threshold_reason(source: str | None, score: float | None,
                     thresholds: Mapping[str, float]) -> str | None:
    """``low_similarity`` for a pair of a thresholded source scoring below it.

    A threshold applies only to the sources it names (the paper filters LAION
    at 0.26 and nothing else). A pair of such a source without a score cannot
    be shown to pass, so it is rejected with the same reason.
    """
    if source is None or source not in thresholds:
        return None
    if score is None or (isinstance(score, float) and math.isnan(score)):
        return REASON_LOW_SIMILARITY
    return REASON_LOW_SIMILARITY if score < thresholds[source] else None


def image_dedup_key(sha256: str, source: str, caption: str | None,
                    caption_sources: frozenset[str]) -> str:
    """The key that groups identical images: sha256 of the stored image; with
    the caption for ``dedup: url_caption`` sources, whose several captions of
    one image are distinct pairs."""
    if source in caption_sources:
        return f"{sha256}{_KEY_SEP}{caption or ''}"
    return sha256
