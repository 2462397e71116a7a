"""Cheap checks on downloaded bytes, done before an image is decoded.

Decoding is where hostile content hurts: a 2 KB file whose header claims
30000x30000 pixels makes a decoder allocate gigabytes (a decompression bomb),
and a JPEG cut off mid-transfer may decode into a half-grey picture that would
enter the corpus as if it were fine. Both are visible in the first and last
bytes of the file, so these checks read only the header and trailer: they cost
microseconds and keep the decoder away from bytes it should never see. A file
whose size cannot be read this way is not decoded at all.
"""

from __future__ import annotations

import struct

from zhclip.pipeline.core.reasons import (
    EMPTY_BODY,
    INVALID_IMAGE,
    NOT_AN_IMAGE,
    TOO_LARGE,
    TRUNCATED_IMAGE,
    tagged,
)

JPEG = "jpeg"
PNG = "png"
WEBP = "webp"
GIF = "gif"
BMP = "bmp"
TIFF = "tiff"

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers that carry the frame size (not DHT/JPG/DAC).
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_TEXT_STARTS = (b"<", b"{", b"[")


def sniff_format(data: bytes) -> str | None:
    """Image format from magic bytes; None when the bytes are no format we know."""
    if data[:3] == b"\xff\xd8\xff":
        return JPEG
    if data[:8] == _PNG_MAGIC:
        return PNG
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return WEBP
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return GIF
    if data[:2] == b"BM":
        return BMP
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return TIFF
    return None


def looks_like_text(data: bytes) -> bool:
    """True for bodies such as an HTML error page or JSON served instead of an image."""
    head = data[:512].lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(_TEXT_STARTS):
        return True
    try:
        head.decode("ascii")
    except UnicodeDecodeError:
        return False
    return all(32 <= b < 127 or b in (9, 10, 13) for b in head)


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """The largest frame a JPEG declares before its first scan.

    Decoders (libjpeg, hence OpenCV and Pillow) skip junk bytes between
    markers, so this scan does too: stopping at the first odd byte would let
    one junk byte hide a 30000x30000 frame. Every frame header is read, and
    the largest wins, so a small decoy frame cannot stand in for a big one.
    """
    i, n = 2, len(data)
    best: tuple[int, int] | None = None
    while i + 4 <= n:
        if data[i] != 0xFF:
            i += 1  # junk between segments, as libjpeg tolerates
            continue
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x00, 0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if marker == 0xDA:  # start of scan: frames come before it
            return best
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in _JPEG_SOF and i + 9 <= n:
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            if best is None or width * height > best[0] * best[1]:
                best = (width, height)
        i += 2 + max(length, 2)
    return best


def _png_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
        return w, h
    if chunk == b"VP8 " and len(data) >= 30:
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _gif_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 10:
        return None
    return struct.unpack("<HH", data[6:10])


def _bmp_size(data: bytes) -> tuple[int, int] | None:
    """BMP width and height (a negative height means top-down rows)."""
    if len(data) < 26:
        return None
    (header_bytes,) = struct.unpack("<I", data[14:18])
    if header_bytes == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        return struct.unpack("<HH", data[18:22])
    width, height = struct.unpack("<ii", data[18:26])
    return abs(width), abs(height)


_SIZE_READERS = {JPEG: _jpeg_size, PNG: _png_size, WEBP: _webp_size, GIF: _gif_size,
                 BMP: _bmp_size}


def header_size(data: bytes, fmt: str | None = None) -> tuple[int, int] | None:
    """(width, height) the file's header claims, without decoding; None if unknown."""
    fmt = fmt or sniff_format(data)
    reader = _SIZE_READERS.get(fmt or "")
    if reader is None:
        return None
    try:
        return reader(data)
    except struct.error:
        return None


def is_truncated(data: bytes, fmt: str | None = None) -> bool:
    """True when the file visibly stops before its format's end marker."""
    fmt = fmt or sniff_format(data)
    if fmt == JPEG:
        last_scan = data.rfind(b"\xff\xda")
        if last_scan < 0:
            return True
        return data.find(b"\xff\xd9", last_scan) < 0
    if fmt == PNG:
        return data.rfind(b"IEND", max(0, len(data) - 64)) < 0
    if fmt == WEBP:
        declared = int.from_bytes(data[4:8], "little") + 8
        return len(data) < declared
    return False


def check_image_bytes(data: bytes, max_image_area: float) -> str | None:
    """Why these bytes must not be decoded, as a tagged error message; None if fine.

    Only formats whose size is read here reach the decoder: for any other
    (TIFF, JPEG 2000, PPM, an unknown binary), or a file of a known format
    whose header gives no size, the pixels it would allocate are unknown, so
    it is refused rather than decoded to find out.
    """
    if not data:
        return tagged(EMPTY_BODY, "the response had no bytes")
    fmt = sniff_format(data)
    if fmt is None:
        if looks_like_text(data):
            return tagged(NOT_AN_IMAGE, f"body is text, starts with {data[:40]!r}")
        return tagged(INVALID_IMAGE, f"not a JPEG, PNG, WebP, GIF or BMP (starts {data[:8]!r})")
    size = header_size(data, fmt)
    if size is None:
        return tagged(INVALID_IMAGE, f"{fmt} file whose pixel size cannot be read before decoding")
    if size[0] * size[1] > max_image_area:
        return tagged(
            TOO_LARGE,
            f"{fmt} header claims {size[0]}x{size[1]} pixels, over download.max_image_area "
            f"({max_image_area:.0f})",
        )
    if is_truncated(data, fmt):
        return tagged(TRUNCATED_IMAGE, f"{fmt} file ends before its end marker ({len(data)} bytes)")
    return None
