"""Stage 3's per-sample rules: decode failure, test-set overlap, the score
threshold, the keys that group identical and near-identical images, and the
region box a Visual Genome region pair is cropped to.

Pure functions, no Beam or torch: the score stage decodes and scores, then
asks these what to do with each sample, exactly as stage 1 asks
:mod:`zhclip.filters.rules`. Each returns a reject reason, or None to keep.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from PIL import Image
from zhclip.filters import near_duplicates as ND
from zhclip.filters.images import min_hamming, phash64
from zhclip.pipeline.core.reasons import (
    REASON_BLANK_IMAGE,
    REASON_DECODE_ERROR,
    REASON_LOW_SIMILARITY,
    REASON_TEST_OVERLAP,
    REASON_UNSAFE_IMAGE,
)

# Separates the image hash from the caption in url_caption dedup keys.
_KEY_SEP = "\x1f"


def decode_reason(error: str | None) -> str | None:
    """``decode_error`` when the image could not be decoded."""
    return REASON_DECODE_ERROR if error is not None else None


def blank_reason(image: Image.Image) -> str | None:
    """``blank_image`` for a flat or near-flat picture (a placeholder, a solid
    colour): its perceptual hash is noise, so it is neither grouped with other
    flat pictures as a near-duplicate nor compared with evaluation images."""
    return REASON_BLANK_IMAGE if ND.is_blank(image) else None


def image_signature(image: Image.Image) -> tuple[str | None, int | None, bytes | None]:
    """(``blank_image``, None, None) for a flat picture, else (None, phash, colour
    signature): what stage 3 groups near-duplicates and checks overlap by."""
    reason = blank_reason(image)
    if reason is not None:
        return reason, None, None
    return None, phash64(image), ND.colour_signature(image)


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


def safety_reason(class_scores: Mapping[str, float], classes: list[str],
                  threshold: float) -> tuple[str | None, str | None]:
    """(``unsafe_image``, the classes found with their confidence) when any of
    ``classes`` scores ``threshold`` or more; (None, None) to keep."""
    found = sorted((c for c in classes if class_scores.get(c, 0.0) >= threshold),
                   key=lambda c: (-class_scores[c], c))
    if not found:
        return None, None
    return REASON_UNSAFE_IMAGE, ", ".join(f"{c} {class_scores[c]:.2f}" for c in found)


def image_dedup_key(sha256: str, source: str, caption: str | None,
                    caption_sources: frozenset[str]) -> str:
    """The key that groups identical images: sha256 of the stored image; with
    the caption for ``dedup: url_caption`` sources, whose several captions of
    one image are distinct pairs."""
    if source in caption_sources:
        return f"{sha256}{_KEY_SEP}{caption or ''}"
    return sha256


def near_duplicate_key(phash: int, source: str, caption: str | None,
                       caption_sources: frozenset[str]) -> str:
    """The key that groups re-encoded / resized copies: the 64-bit perceptual
    hash (hex), with the caption for ``dedup: url_caption`` sources, as in
    :func:`image_dedup_key`."""
    return image_dedup_key(f"{phash:016x}", source, caption, caption_sources)


def band_keys(phash: int, max_distance: int) -> list[tuple[int, int]]:
    """(band index, band bits) for the ``max_distance + 1`` bands of a 64-bit hash.

    Pigeonhole: two hashes within Hamming distance k differ in at most k bits,
    so at least one of k + 1 disjoint bands is identical; hashes sharing a band
    are the candidates whose full distance is then checked.
    """
    n = max_distance + 1
    edges = [round(i * 64 / n) for i in range(n + 1)]
    out = []
    for i in range(n):
        width = edges[i + 1] - edges[i]
        out.append((i, (phash >> (64 - edges[i + 1])) & ((1 << width) - 1)))
    return out


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def near_duplicate_matches(entries: list[tuple], max_distance: int) -> dict[str, str]:
    """{loser key: the smallest key it duplicates} over ``(key, phash[, colour])``
    entries: an entry loses to a smaller-key near-duplicate, meaning hashes within
    ``max_distance`` bits and, when both carry a colour signature, the same
    coarse colours (:func:`~zhclip.filters.near_duplicates.is_near_duplicate`).

    The same rule as sha256 dedup (smallest key survives), applied to each pair
    of candidates; it needs no transitive closure, so one pass over the band
    groups decides. In a chain a~b~c with a and c apart, b and c both lose.
    """
    ordered = sorted((e[0], e[1], e[2] if len(e) > 2 else None) for e in entries)
    matches = {}
    for i, (key, h, colour) in enumerate(ordered):
        for other, oh, oc in ordered[:i]:
            if ND.is_near_duplicate((h, colour), (oh, oc), max_distance):
                matches[key] = other
                break
    return matches


def near_duplicate_losers(entries: list[tuple], max_distance: int) -> list[str]:
    """Keys of the entries :func:`near_duplicate_matches` finds a smaller near-duplicate for."""
    return list(near_duplicate_matches(entries, max_distance))


def scaled_box(box: tuple[int | None, int | None, int | None, int | None],
               source_size: tuple[int | None, int | None], original_size: tuple[int | None, int | None],
               stored_size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """A region box given in the source's coordinates, in pixels of the stored image.

    ``source_size`` is the size the box refers to (Visual Genome's image_data),
    ``original_size`` the image as downloaded, ``stored_size`` the image after
    stage 2's resize. The resize is taken as one scale and a centred crop,
    which covers ``no``, ``keep_ratio`` and ``center_crop``. Returns
    (left, top, right, bottom) clipped to the stored image, or None when the box
    is missing or leaves no pixel (the pair cannot be cropped).
    """
    x, y, w, h = box
    if None in (x, y, w, h) or w <= 0 or h <= 0:
        return None
    sw, sh = stored_size
    ow, oh = (original_size if None not in original_size and min(original_size) > 0 else source_size)
    bw, bh = (source_size if None not in source_size and min(source_size) > 0 else (ow, oh))
    if None in (ow, oh, bw, bh) or min(ow, oh, bw, bh) <= 0:
        return None
    scale = max(sw / ow, sh / oh)
    fx, fy = ow / bw * scale, oh / bh * scale
    off_x, off_y = (ow * scale - sw) / 2, (oh * scale - sh) / 2
    left = max(0, round(x * fx - off_x))
    top = max(0, round(y * fy - off_y))
    right = min(sw, round((x + w) * fx - off_x))
    bottom = min(sh, round((y + h) * fy - off_y))
    if right - left < 1 or bottom - top < 1:
        return None
    return left, top, right, bottom
