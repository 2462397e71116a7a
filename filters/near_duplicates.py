"""When two stored images are the same picture, and when a picture is too flat to tell.

The perceptual hash (:func:`zhclip.filters.images.phash64`) is computed on grey
levels, so it sees layout, not colour: the same product photographed in red and
in blue hashes alike, and every flat placeholder hashes to noise around zero.
Two images are near-duplicates here only when their hashes are close *and*
their coarse colour layouts agree; an image whose pixels barely vary is not
hashed at all but rejected as ``blank_image`` (see
:func:`zhclip.filters.image_rules.blank_reason`).

Pure numpy and PIL, so stage 3, the tests and ``bench/near_duplicates.py``
share one definition. Thresholds were chosen on the labelled pair set of
``bench/near_duplicates.py`` (wheel photographs and generated variants).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# Colour signature: the image box-averaged to a GRID x GRID thumbnail, RGB bytes.
# 4 x 4 cells keep where colours are (a red shirt on a blue sky is not a blue
# shirt on a red sky) while a crop of 5% per side moves a cell by a fifth only.
COLOUR_GRID = 4
COLOUR_BYTES = COLOUR_GRID * COLOUR_GRID * 3
# Mean chroma difference (0-255 scale) above which two pictures are colour
# variants. Re-encodes, resizes, blur and sharpening stay under 2, crops of up
# to 5% per side under 9 on the wheel photos; a 60-degree hue turn of a
# coloured photo is 12 or more.
MAX_COLOUR_DISTANCE = 10.0
# Structure: the largest per-channel standard deviation of a 32 x 32 box
# thumbnail (0-255). Real photographs measure 11 and up (the moon: 11.4); a
# solid colour with JPEG noise, or a faint watermark on a flat ground, under 2.
STRUCTURE_SIDE = 32
MIN_STRUCTURE = 4.0


def colour_signature(image: Image.Image) -> bytes:
    """The picture's coarse colour layout: a 4 x 4 RGB thumbnail, 48 bytes."""
    small = image.convert("RGB").resize((COLOUR_GRID, COLOUR_GRID), Image.Resampling.BOX)
    return small.tobytes()


def _chroma(signature: bytes) -> np.ndarray:
    """Opponent colour axes (red-green, yellow-blue) per cell; brightness left out,
    since the hash already compares light and dark."""
    rgb = np.frombuffer(signature, dtype=np.uint8).reshape(-1, 3).astype(np.float32)
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    return np.stack([r - g, (r + g) / 2.0 - b], axis=1)


def colour_distance(a: bytes, b: bytes) -> float:
    """Mean absolute chroma difference between two colour signatures (0-255 scale)."""
    if len(a) != COLOUR_BYTES or len(b) != COLOUR_BYTES:
        raise ValueError(f"colour signatures are {COLOUR_BYTES} bytes, got {len(a)} and {len(b)}")
    return float(np.abs(_chroma(a) - _chroma(b)).mean())


def same_colours(
    a: bytes | None, b: bytes | None, max_distance: float = MAX_COLOUR_DISTANCE
) -> bool:
    """True when the colour layouts agree; a missing signature (an entry made
    before signatures existed, or by a caller that has none) does not veto."""
    if a is None or b is None:
        return True
    return colour_distance(a, b) <= max_distance


def structure(image: Image.Image) -> float:
    """How much the picture varies: the largest per-channel standard deviation
    of its 32 x 32 box thumbnail. Measured per channel so that two colours of
    equal brightness side by side still count as structure."""
    small = image.convert("RGB").resize((STRUCTURE_SIDE, STRUCTURE_SIDE), Image.Resampling.BOX)
    arr = np.asarray(small, dtype=np.float32).reshape(-1, 3)
    return float(arr.std(axis=0).max())


def is_blank(image: Image.Image, min_structure: float = MIN_STRUCTURE) -> bool:
    """True for a flat or near-flat picture, whose hash would mean nothing."""
    return structure(image) < min_structure


def is_near_duplicate(
    a: tuple[int, bytes | None],
    b: tuple[int, bytes | None],
    max_bits: int,
    max_colour: float = MAX_COLOUR_DISTANCE,
) -> bool:
    """The stage-3 rule on two (phash, colour signature) pairs: hashes within
    ``max_bits`` and colour layouts within ``max_colour``."""
    return (a[0] ^ b[0]).bit_count() <= max_bits and same_colours(a[1], b[1], max_colour)
