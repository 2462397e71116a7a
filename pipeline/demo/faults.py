"""The loopback server's misbehaving paths: which error class each must end in, and the
hostile payloads (decompression bombs) some of them send.

Kept apart from the server so tests can build the same payloads without serving them.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from zhclip.pipeline.core.reasons import (
    DISALLOWED_BY_HEADER,
    EMPTY_BODY,
    HTTP_4XX,
    HTTP_5XX,
    NOT_AN_IMAGE,
    PRIVATE_ADDRESS,
    REDIRECT_LOOP,
    RESPONSE_TOO_LARGE,
    TIMEOUT,
    TOO_LARGE,
    TRUNCATED_IMAGE,
)

BOMB_SIDE = 30_000


@dataclass(frozen=True)
class Fault:
    """One misbehaving path and the error class a download of it must end in."""

    path: str
    expected_class: str | None  # None: the download must succeed


FAULTS: dict[str, Fault] = {
    "http_404": Fault("/fault/404.jpg", HTTP_4XX),
    "http_500": Fault("/fault/500.jpg", HTTP_5XX),
    "slow": Fault("/fault/slow.jpg", TIMEOUT),
    "truncated_jpeg": Fault("/fault/truncated.jpg", TRUNCATED_IMAGE),
    "html_body": Fault("/fault/page.jpg", NOT_AN_IMAGE),
    "empty_body": Fault("/fault/empty.jpg", EMPTY_BODY),
    "decompression_bomb": Fault("/fault/bomb.png", TOO_LARGE),
    "redirect_loop": Fault("/fault/loop.jpg", REDIRECT_LOOP),
    "redirect_private": Fault("/fault/to-private.jpg", PRIVATE_ADDRESS),
    "redirect_metadata": Fault("/fault/to-metadata.jpg", PRIVATE_ADDRESS),
    "robots_noai": Fault("/fault/noai.jpg", DISALLOWED_BY_HEADER),
    "wrong_content_type": Fault("/fault/wrong-type.jpg", None),
}

# Responses built to hurt the client rather than merely fail: each must end in
# its error class within the download deadline and memory bound.
HOSTILE: dict[str, Fault] = {
    "drip_headers": Fault("/hostile/drip-headers.jpg", TIMEOUT),
    "drip_body": Fault("/hostile/drip-body.jpg", TIMEOUT),
    "chunked_small_length": Fault("/hostile/chunked.jpg", RESPONSE_TOO_LARGE),
    "jpeg_junk_before_sof": Fault("/hostile/junk-sof.jpg", TOO_LARGE),
    "rle_bmp_bomb": Fault("/hostile/rle-bomb.bmp", TOO_LARGE),
}
BMP_BOMB_SIDE = 15_000
JPEG_BOMB_SIDE = 20_000

PRIVATE_REDIRECT_TARGET = "http://10.0.0.1/image.jpg"
METADATA_REDIRECT_TARGET = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def decompression_bomb_png(side: int = BOMB_SIDE) -> bytes:
    """A ~100-byte PNG whose header claims side x side RGB pixels."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def jpeg_with_junk_before_sof(jpeg: bytes, side: int = JPEG_BOMB_SIDE) -> bytes:
    """``jpeg`` with its frame header claiming side x side, behind one junk byte.

    libjpeg skips the junk (with a warning) and allocates the full frame; a size
    check that stops at the first byte that is not 0xFF never sees it.
    """
    sof = next(jpeg.find(bytes([0xFF, m])) for m in (0xC0, 0xC2) if jpeg.find(bytes([0xFF, m])) > 0)
    patched = jpeg[: sof + 5] + struct.pack(">HH", side, side) + jpeg[sof + 9 :]
    return patched[:sof] + b"\x00" + patched[sof:]


def rle_bmp_bomb(side: int = BMP_BOMB_SIDE) -> bytes:
    """A ~1 KB RLE8 BMP whose header claims side x side pixels (the data ends at once)."""
    palette = b"".join(bytes([i, i, i, 0]) for i in range(256))
    pixels = b"\x00\x01"  # RLE8 "end of bitmap": every pixel left at index 0
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, side, side, 1, 8, 1, len(pixels), 2835, 2835, 256, 0)
    header = b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset)
    return header + info + palette + pixels
