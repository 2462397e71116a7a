"""Pure image helpers for stage 3: decoding, hashing and CLIP preprocessing.

Everything here works on bytes, PIL images and numpy arrays, so the scoring
job, the tests and the inspection tools share one definition of "the image's
sha256", "its perceptual hash" and "the tensor a CLIP image tower sees"
without importing Beam or torch.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Sequence

import numpy as np
from PIL import Image

# OpenAI CLIP normalisation (open_clip.constants.OPENAI_DATASET_MEAN/STD).
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

JPEG_QUALITY = 95


class ImageDecodeError(ValueError):
    """Bytes that PIL cannot turn into an RGB image (truncated, HTML, bomb, ...)."""


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of raw bytes; the identity used for exact-duplicate removal."""
    return hashlib.sha256(data).hexdigest()


def decode_image(data: bytes) -> Image.Image:
    """Decode ``data`` fully into an RGB image, or raise ImageDecodeError.

    ``load()`` is called here so that a truncated file fails now, with its
    sample's key at hand, instead of later inside a batch of other samples.
    """
    if not data:
        raise ImageDecodeError("empty image bytes")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # pixels now live in memory; closing the file is harmless
            if img.mode != "RGB":
                # Palette/LA images with transparency composite on white, which is
                # what a browser shows and what the caption describes.
                if img.mode in ("RGBA", "LA", "P"):
                    rgba = img.convert("RGBA")
                    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                    return Image.alpha_composite(background, rgba).convert("RGB")
                return img.convert("RGB")
            return img
    except ImageDecodeError:
        raise
    except Exception as err:  # PIL raises many types: OSError, SyntaxError, DecompressionBomb*
        raise ImageDecodeError(f"{type(err).__name__}: {err}") from None


def is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def to_jpeg_bytes(data: bytes, image: Image.Image | None = None) -> bytes:
    """The bytes stored as ``{key}.jpg``: JPEG input unchanged, anything else re-encoded.

    Keeping JPEG bytes as downloaded means sha256 in the shards equals the
    download's sha256; PNG/WebP downloads are encoded once, deterministically.
    """
    if is_jpeg(data):
        return data
    img = image if image is not None else decode_image(data)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


# --- perceptual hash (decontamination) -------------------------------------


def phash64(image: Image.Image) -> int:
    """64-bit DCT perceptual hash as an unsigned int (imagehash.phash, hash_size 8)."""
    import imagehash  # imports scipy; only paid when decontamination is on

    bits = imagehash.phash(image, hash_size=8).hash.flatten()
    value = 0
    for bit in bits:
        value = (value << 1) | int(bool(bit))
    return value


def phash_index(hashes: Iterable[int]) -> np.ndarray:
    """Pack hashes into a uint64 array for :func:`min_hamming`."""
    return np.asarray(list(hashes), dtype=np.uint64)


def min_hamming(value: int, index: np.ndarray) -> int:
    """Smallest Hamming distance between ``value`` and any hash in ``index`` (65 if empty)."""
    if index.size == 0:
        return 65
    xored = np.bitwise_xor(index, np.uint64(value))
    bits = np.unpackbits(xored.view(np.uint8).reshape(-1, 8), axis=1)
    return int(bits.sum(axis=1).min())


# --- CLIP preprocessing -----------------------------------------------------


def resize_shortest_side(image: Image.Image, size: int) -> Image.Image:
    """Bicubic resize so the short side is ``size``; same arithmetic as torchvision.Resize(int)."""
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    if short == size:
        return image
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    return image.resize((new_w, new_h), Image.BICUBIC)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """Center crop to ``size``x``size``; same rounding as torchvision.CenterCrop."""
    w, h = image.size
    if w < size or h < size:
        # torchvision pads with zeros; a resized image never gets here.
        padded = Image.new("RGB", (max(w, size), max(h, size)))
        padded.paste(image, ((max(w, size) - w) // 2, (max(h, size) - h) // 2))
        image, (w, h) = padded, padded.size
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def clip_pixels(image: Image.Image, size: int = 224) -> np.ndarray:
    """Image -> uint8 HWC array after the CLIP resize and center crop, not yet normalised.

    Scorers transpose and normalise whole batches on the model's device, which
    costs a fraction of doing it per image in numpy on the decode thread.
    """
    img = center_crop(resize_shortest_side(image.convert("RGB"), size), size)
    return np.asarray(img, dtype=np.uint8)


def clip_preprocess(
    image: Image.Image,
    size: int = 224,
    mean: Sequence[float] = OPENAI_MEAN,
    std: Sequence[float] = OPENAI_STD,
) -> np.ndarray:
    """Image -> float32 CHW array, the CLIP eval transform (resize, center crop, normalise).

    Done in numpy so decoding workers need no torch; the result matches
    open_clip's eval transform (checked in tests).
    """
    img = center_crop(resize_shortest_side(image.convert("RGB"), size), size)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = (arr - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))
