"""Images of the simulated web: realistic sizes and formats, unique per URL, stored nowhere.

Encoding a 2,000-pixel JPEG per request would make the server, not the
crawler, the bottleneck. So baseline JPEGs are assembled: for each size, a
few variant pictures are encoded once with a restart marker after every
MCU row and the standard Huffman tables; restart intervals are independently
coded, so picking, per row, the interval of one variant or another (by the
URL's hash) gives a valid JPEG whose pixels are unique to the URL, at the cost
of a byte join. Progressive JPEGs, PNGs and WebPs (a minority) are encoded per
URL, at most ``PER_URL_MAX_SIDE`` pixels wide so their cost stays small.
"""

from __future__ import annotations

import hashlib
import io
import threading

import numpy as np
from PIL import Image

VARIANTS = 4  # pictures per JPEG size; each MCU row comes from one of them
QUALITY = 85
PER_URL_MAX_SIDE = 512
_RST = [bytes([0xFF, 0xD0 + i]) for i in range(8)]


def _rng(seed: str) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big"))


def picture(seed: str, width: int, height: int, noise: float = 6.0) -> np.ndarray:
    """An RGB picture: a tilted two-colour gradient, a few flat shapes, mild noise.

    Close enough to a photo's statistics that JPEG sizes land in the 20-500 KB
    range of real crawls, and different enough per seed for perceptual hashes.
    """
    rng = _rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    t = (x * np.cos(angle) + y * np.sin(angle)) / max(width, height)
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    img = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = (
            int(rng.integers(width // 10, width // 2 + 2)),
            int(rng.integers(height // 10, height // 2 + 2)),
        )
        img[y0 : y0 + h, x0 : x0 + w] = rng.uniform(0, 255, 3)
    if noise:
        img += rng.normal(0, noise, (height, width, 1)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _split_jpeg(data: bytes) -> tuple[bytes, list[bytes]]:
    """(everything up to the entropy-coded data, the restart intervals without markers)."""
    sos = data.index(b"\xff\xda")
    start = sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")
    end = data.rindex(b"\xff\xd9")
    body = data[start:end]
    segments, last, i = [], 0, 0
    while True:
        i = body.find(b"\xff", i)
        if i < 0 or i + 1 >= len(body):
            break
        if 0xD0 <= body[i + 1] <= 0xD7:
            segments.append(body[last:i])
            last = i + 2
        i += 2 if body[i + 1] == 0 or 0xD0 <= body[i + 1] <= 0xD7 else 1
    segments.append(body[last:])
    return data[:start], segments


class JpegTemplates:
    """Per (width, height, cmyk): a shared header and VARIANTS lists of restart intervals."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict[tuple[int, int, bool], tuple[bytes, list[list[bytes]]]] = {}

    def ready(self, width: int, height: int, cmyk: bool) -> bool:
        """Whether the templates of this size are rendered (assembling them is then cheap)."""
        with self._lock:
            return (width, height, cmyk) in self._cache

    def get(self, width: int, height: int, cmyk: bool) -> tuple[bytes, list[list[bytes]]]:
        key = (width, height, cmyk)
        with self._lock:
            found = self._cache.get(key)
        if found is None:
            found = self._render(*key)
            with self._lock:
                self._cache.setdefault(key, found)
        return found

    def _render(self, width: int, height: int, cmyk: bool) -> tuple[bytes, list[list[bytes]]]:
        header, variants = None, []
        for v in range(VARIANTS):
            img = Image.fromarray(picture(f"tpl/{width}x{height}/{v}", width, height))
            if cmyk:
                img = img.convert("CMYK")
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=QUALITY, restart_marker_rows=1, optimize=False)
            head, segments = _split_jpeg(buf.getvalue())
            if header is None:
                header = head
            elif head != header or len(segments) != len(variants[0]):
                raise RuntimeError(f"JPEG variants of {width}x{height} do not share a header")
            variants.append(segments)
        return header, variants

    def assemble(self, key: str, width: int, height: int, cmyk: bool, orientation: int) -> bytes:
        """The JPEG of URL ``key``: per restart interval, the variant its hash picks."""
        header, variants = self.get(width, height, cmyk)
        rows = len(variants[0])
        choice = hashlib.shake_128(key.encode()).digest(rows)
        parts = [header[:2], exif_segment(orientation), header[2:]]
        for i in range(rows):
            if i:
                parts.append(_RST[(i - 1) % 8])
            parts.append(variants[choice[i] % VARIANTS][i])
        parts.append(b"\xff\xd9")
        return b"".join(parts)


def exif_segment(orientation: int) -> bytes:
    """An APP1 Exif segment carrying only an Orientation tag (empty bytes for 1)."""
    if orientation == 1:
        return b""
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = exif.tobytes()
    if not data.startswith(b"Exif"):
        data = b"Exif\x00\x00" + data
    return b"\xff\xe1" + (len(data) + 2).to_bytes(2, "big") + data


def encode_one(key: str, fmt: str, width: int, height: int, progressive: bool) -> bytes:
    """A progressive JPEG, PNG or WebP drawn for ``key`` alone (at most PER_URL_MAX_SIDE wide)."""
    if width > PER_URL_MAX_SIDE:
        height, width = max(16, height * PER_URL_MAX_SIDE // width), PER_URL_MAX_SIDE
    # PNGs are mostly graphics: flat areas, no noise (noise would make them megabytes).
    img = Image.fromarray(picture(key, width, height, noise=0.0 if fmt == "png" else 6.0))
    buf = io.BytesIO()
    if fmt == "jpg":
        img.save(buf, "JPEG", quality=QUALITY, progressive=progressive)
    elif fmt == "png":
        img.save(buf, "PNG", compress_level=1)
    else:
        img.save(buf, "WEBP", quality=80, method=0)
    return buf.getvalue()
