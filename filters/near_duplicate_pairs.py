"""A labelled pair set for the near-duplicate rule, built from real photographs
that ship inside wheels, and its precision and recall.

Photographs come from scikit-image's ``data`` module, scikit-learn's sample
images and matplotlib's sample data (dev dependencies, imported only here);
nothing is copied into the repository. Every picture goes through what stage 2
does by default (short side to 224, centre crop, JPEG q95) after its variant is
made, as a copy found elsewhere on the web would.

Labels: a re-encode (JPEG q40-95, WebP), a resize (0.25x-4x), a crop of at
most 5% per side, mild blur or sharpening is the *same* picture; a colour
variant (hue turned, channels swapped, grey) of a coloured photo and any two
different photographs are *different* pictures.
"""

from __future__ import annotations

import io
import itertools
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFilter, ImageOps
from zhclip.filters import images as I
from zhclip.filters import near_duplicates as ND

# Coloured photographs (colour variants are made of these) and grey ones.
SKIMAGE_COLOUR = ("astronaut", "chelsea", "coffee", "immunohistochemistry", "rocket", "retina")
SKIMAGE_GREY = ("camera", "coins", "moon", "clock", "grass", "gravel", "brick")
DOWNLOAD_SIDE = 224


def wheel_photos() -> dict[str, Image.Image]:
    """name -> RGB photograph, from the installed wheels (coloured ones first)."""
    import matplotlib
    import skimage.data as skd
    from sklearn.datasets import load_sample_images

    photos = {n: Image.fromarray(getattr(skd, n)()).convert("RGB") for n in SKIMAGE_COLOUR}
    for name, arr in zip(("china", "flower"), load_sample_images().images, strict=True):
        photos[name] = Image.fromarray(arr)
    hopper = os.path.join(
        os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data", "grace_hopper.jpg"
    )
    with Image.open(hopper) as img:
        photos["grace_hopper"] = img.convert("RGB")
    photos.update({n: Image.fromarray(getattr(skd, n)()).convert("RGB") for n in SKIMAGE_GREY})
    return photos


def colourful(name: str) -> bool:
    return name not in SKIMAGE_GREY


def encode(image: Image.Image, fmt: str = "JPEG", quality: int = 95) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, quality=quality)
    return buf.getvalue()


def reopen(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")


def downloaded(image: Image.Image, side: int = DOWNLOAD_SIDE) -> bytes:
    """The bytes stage 2 stores by default: short side to ``side``, centre crop, JPEG q95."""
    return encode(I.center_crop(I.resize_shortest_side(image, side), side))


def _crop(image: Image.Image, left: float, top: float, right: float, bottom: float) -> Image.Image:
    w, h = image.size
    return image.crop(
        (round(w * left), round(h * top), w - round(w * right), h - round(h * bottom))
    )


def _scaled(image: Image.Image, factor: float) -> Image.Image:
    w, h = image.size
    return image.resize(
        (max(1, round(w * factor)), max(1, round(h * factor))), Image.Resampling.BICUBIC
    )


def turn_hue(image: Image.Image, degrees: int) -> Image.Image:
    hsv = np.asarray(image.convert("HSV")).copy()
    hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + round(degrees * 256 / 360)) % 256).astype(
        np.uint8
    )
    return Image.fromarray(hsv, "HSV").convert("RGB")


# name -> variant maker; the same picture after the web and stage 2 handled it.
SAME: dict[str, Callable[[Image.Image], Image.Image]] = {
    "jpeg_q40": lambda im: reopen(encode(im, "JPEG", 40)),
    "jpeg_q60": lambda im: reopen(encode(im, "JPEG", 60)),
    "jpeg_q80": lambda im: reopen(encode(im, "JPEG", 80)),
    "webp_q75": lambda im: reopen(encode(im, "WEBP", 75)),
    "resize_0.25": lambda im: _scaled(im, 0.25),
    "resize_0.5": lambda im: _scaled(im, 0.5),
    "resize_2": lambda im: _scaled(im, 2.0),
    "resize_4": lambda im: _scaled(im, 4.0),
    "crop_2pct": lambda im: _crop(im, 0.02, 0.02, 0.02, 0.02),
    "crop_5pct": lambda im: _crop(im, 0.05, 0.05, 0.05, 0.05),
    "crop_5pct_left": lambda im: _crop(im, 0.05, 0.0, 0.0, 0.0),
    "crop_3pct_top_right": lambda im: _crop(im, 0.0, 0.03, 0.03, 0.0),
    "blur": lambda im: im.filter(ImageFilter.GaussianBlur(1.0)),
    "sharpen": lambda im: im.filter(ImageFilter.UnsharpMask(radius=2, percent=80)),
}
# Colour variants: the same layout in other colours (made only of coloured photos).
RECOLOURED: dict[str, Callable[[Image.Image], Image.Image]] = {
    "hue_60": lambda im: turn_hue(im, 60),
    "hue_120": lambda im: turn_hue(im, 120),
    "hue_180": lambda im: turn_hue(im, 180),
    "channels_bgr": lambda im: Image.merge("RGB", im.split()[::-1]),
    "grey": lambda im: ImageOps.grayscale(im).convert("RGB"),
}


@dataclass(frozen=True)
class Pair:
    """Two stored images (JPEG bytes) and whether they are the same picture."""

    kind: str  # variant name, or "different_photo"
    a: bytes
    b: bytes
    same: bool


def pair_set(
    photos: dict[str, Image.Image] | None = None,
    same: Iterable[str] = tuple(SAME),
    recoloured: Iterable[str] = tuple(RECOLOURED),
) -> list[Pair]:
    """Every labelled pair: each photo with each of its variants, and every two photos."""
    photos = photos if photos is not None else wheel_photos()
    stored = {n: downloaded(img) for n, img in photos.items()}
    pairs = []
    for name, img in photos.items():
        pairs += [Pair(v, stored[name], downloaded(SAME[v](img)), True) for v in same]
        if colourful(name):
            pairs += [
                Pair(v, stored[name], downloaded(RECOLOURED[v](img)), False) for v in recoloured
            ]
    pairs += [
        Pair("different_photo", stored[a], stored[b], False)
        for a, b in itertools.combinations(stored, 2)
    ]
    return pairs


Signature = tuple[int, bytes | None]


def signature(data: bytes, colour: bool = True) -> Signature:
    """What stage 3 compares of a stored image: its phash and (optionally) colour signature."""
    img = I.decode_image(data)
    return I.phash64(img), ND.colour_signature(img) if colour else None


@dataclass
class Quality:
    """Pair precision and recall of one rule, and what it got wrong by kind."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0
    misses: dict[str, int] = field(default_factory=dict)  # same pictures kept apart, by variant
    false_merges: dict[str, int] = field(default_factory=dict)  # different pictures merged, by kind

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0


def evaluate(
    pairs: list[Pair],
    max_bits: int,
    colour: bool = True,
    max_colour: float = ND.MAX_COLOUR_DISTANCE,
) -> Quality:
    """Run the stage-3 rule (:func:`~zhclip.filters.near_duplicates.is_near_duplicate`) on every pair."""
    cache: dict[bytes, Signature] = {}
    q = Quality()
    for p in pairs:
        for data in (p.a, p.b):
            if data not in cache:
                cache[data] = signature(data, colour)
        sa, sb = cache[p.a], cache[p.b]
        merged = ND.is_near_duplicate(sa, sb, max_bits, max_colour)
        if p.same and merged:
            q.tp += 1
        elif p.same:
            q.fn += 1
            q.misses[p.kind] = q.misses.get(p.kind, 0) + 1
        elif merged:
            q.fp += 1
            q.false_merges[p.kind] = q.false_merges.get(p.kind, 0) + 1
        else:
            q.tn += 1
    return q
