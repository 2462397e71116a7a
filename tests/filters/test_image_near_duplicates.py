"""The near-duplicate rule on real photographs from the installed wheels: re-encodes,
resizes and mild filtering merge, colour variants and different photos do not,
and flat pictures are blank rather than hashed."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from zhclip.filters import image_rules
from zhclip.filters import near_duplicate_pairs as NP
from zhclip.filters import near_duplicates as ND
from zhclip.pipeline.core import reasons as RS

SUBSET = ("astronaut", "coffee", "rocket", "china", "grace_hopper", "camera", "moon")


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    pytest.importorskip("skimage", reason="scikit-image ([dev]) ships the photographs")
    every = NP.wheel_photos()
    return {n: every[n] for n in SUBSET}


@pytest.fixture(scope="module")
def pairs(photos) -> list[NP.Pair]:
    return NP.pair_set(photos)


def test_colour_signature_keeps_variants_apart_and_copies_together(pairs):
    q = NP.evaluate(pairs, max_bits=8)
    assert q.fp == 0, q.false_merges  # no colour variant, no other photo merged
    assert q.precision == 1.0 and q.recall >= 0.85, (q.precision, q.recall, q.misses)
    # what is missed are the crops; every re-encode, resize, blur and sharpening merges
    assert set(q.misses) <= {"crop_2pct", "crop_5pct", "crop_5pct_left", "crop_3pct_top_right"}
    grey = NP.evaluate(pairs, max_bits=8, colour=False)
    assert grey.recall == q.recall  # the colour check costs no true pair here...
    assert grey.false_merges.get("grey", 0) >= 5  # ...and the grey hash alone merges variants
    assert {"hue_120", "channels_bgr"} <= set(grey.false_merges)


def test_exact_hash_with_colour_still_merges_plain_reencodes(pairs):
    q = NP.evaluate(pairs, max_bits=0)
    assert q.fp == 0
    merged = {p.kind for p in pairs if p.same} - set(q.misses)
    assert {"jpeg_q40", "resize_0.5", "resize_2", "blur", "sharpen"} <= merged


def _jpeg(img: Image.Image, quality: int = 90) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def test_flat_pictures_are_blank_and_photos_are_not(photos):
    rng = np.random.default_rng(0)
    flat = [
        Image.new("RGB", (224, 224), c)
        for c in ((255, 0, 0), (0, 0, 255), (128, 128, 128), (255, 255, 255))
    ]
    faint = np.full((224, 224, 3), 200, np.int16) + rng.integers(-3, 4, (224, 224, 3))
    near_flat = [_jpeg(f, 40) for f in flat] + [Image.fromarray(faint.astype(np.uint8))]
    for img in flat + near_flat:
        assert image_rules.blank_reason(img) == RS.REASON_BLANK_IMAGE, ND.structure(img)
    for name, img in photos.items():
        assert image_rules.blank_reason(img) is None, (name, ND.structure(img))
    # two colours of equal brightness side by side are structure, not blank
    halves = Image.new("RGB", (224, 224), (200, 60, 60))
    halves.paste((60, 140, 60), (112, 0, 224, 224))
    assert image_rules.blank_reason(halves) is None


def test_losers_need_close_hash_and_colour():
    red, blue = Image.new("RGB", (8, 8), (220, 30, 30)), Image.new("RGB", (8, 8), (30, 30, 220))
    r, b = ND.colour_signature(red), ND.colour_signature(blue)
    h = 0x0123456789ABCDEF
    entries = [("c", h, b), ("b", h ^ 1, r), ("a", h, r), ("d", h ^ 0xFFFF, r)]
    assert image_rules.near_duplicate_losers(entries, 1) == ["b"]  # c is blue, d too far
    assert image_rules.near_duplicate_losers([("b", h, None), ("a", h, r)], 0) == ["b"]  # no veto
    with pytest.raises(ValueError, match="48 bytes"):
        ND.colour_distance(r, b"\x00")
