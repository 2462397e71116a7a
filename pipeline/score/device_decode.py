"""JPEG decode, CLIP resize/crop and normalisation on the model's device, in batches.

On a GPU machine a few CPU cores decoding with PIL cannot feed a model that
scores thousands of pairs a second, so stage 3 can hand the raw JPEG bytes to
``torchvision.io.decode_jpeg(device="cuda")`` (nvJPEG) instead. The GPU decoder
takes only plain JPEGs: :func:`device_decodable` reads the header and sends
everything else (PNG/WebP, CMYK/YCCK, progressive or arithmetic-coded files,
12-bit samples) to the CPU path, which is the same PIL code the plain path
runs. A file that passes the header check but still fails on the device also
falls back, one by one, so a batch never fails as a whole.

The geometry equals :func:`zhclip.filters.images.resize_shortest_side` and
:func:`~zhclip.filters.images.center_crop`, and the resampling is PIL's
bicubic (two rounded passes of torch's antialiased kernel): on CPU tensors
pixels match PIL's within one level, and ``decode_jpeg`` on CPU gives PIL's exact pixels
(both are libjpeg-turbo). nvJPEG's IDCT may differ by a level or so more.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# Start-of-frame markers nvJPEG decodes: baseline and extended sequential Huffman.
DEVICE_SOF = frozenset({0xC0, 0xC1})
# Every start-of-frame marker (C4 = DHT, C8 = JPG, CC = DAC are not frames).
ALL_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


@dataclass(frozen=True)
class JpegHeader:
    """What the frame header says about a JPEG, read without decoding it."""

    width: int
    height: int
    components: int
    precision: int
    sof: int


def read_jpeg_header(data: bytes) -> JpegHeader | None:
    """The first frame header of a JPEG; ``None`` for anything that is not a well-formed JPEG start."""
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2: pos + 4], "big")
        if marker in ALL_SOF:
            body = data[pos + 4: pos + 2 + length]
            if length < 8 or len(body) < 6:
                return None
            return JpegHeader(width=int.from_bytes(body[3:5], "big"),
                              height=int.from_bytes(body[1:3], "big"),
                              components=body[5], precision=body[0], sof=marker)
        if marker == 0xDA or length < 2:  # scan before any frame header: malformed
            return None
        pos += 2 + length
    return None


def device_decodable(data: bytes) -> bool:
    """True for the JPEGs the GPU decoder takes: 8-bit, grey or YCbCr, sequential Huffman."""
    header = read_jpeg_header(data)
    return (header is not None and header.sof in DEVICE_SOF and header.precision == 8
            and header.components in (1, 3) and header.width > 0 and header.height > 0)


def crop_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """(new_w, new_h, top, left): the resize and crop that filters.images applies, as numbers."""
    short, long = (width, height) if width <= height else (height, width)
    if short == size:
        new_w, new_h = width, height
    else:
        new_long = int(size * long / short)
        new_w, new_h = (size, new_long) if width <= height else (new_long, size)
    return new_w, new_h, int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))


def _bicubic(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 CHW resized the way PIL's bicubic does it, uint8 out.

    PIL resizes width first, stores that pass as uint8, then resizes height; the
    same two float32 passes of torch's antialiased bicubic (a = -0.5, PIL's
    kernel), each rounded, match PIL within one level on under 0.1% of pixels.
    Float rather than torch's uint8 kernel because CUDA has no uint8 bicubic,
    and this way the CPU tests check the very arithmetic the GPU runs.
    """
    out = image.unsqueeze(0).float()
    for size in ((out.shape[2], width), (height, width)):
        if tuple(out.shape[2:]) != size:
            out = F.interpolate(out, size=size, mode="bicubic", antialias=True, align_corners=False)
            out = out.round_().clamp_(0, 255)
    return out.squeeze(0).to(torch.uint8)


def resize_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 CHW -> uint8 CHW ``size`` x ``size``: shortest side to ``size`` (bicubic), center crop."""
    _, height, width = image.shape
    new_w, new_h, top, left = crop_box(width, height, size)
    if (new_w, new_h) != (width, height):
        image = _bicubic(image, new_h, new_w)
    if new_w < size or new_h < size:  # only a degenerate 0-size short side gets here
        image = F.pad(image, (0, max(0, size - new_w), 0, max(0, size - new_h)))
    return image[:, top: top + size, left: left + size]


def normalise(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 NCHW -> float32 NCHW, ToTensor + Normalize arithmetic (same as the scorer's)."""
    m = torch.tensor(mean, device=batch.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=batch.device).view(1, -1, 1, 1)
    return (batch.float() / 255.0 - m) / s


def _decode(blobs: list[bytes], device: str) -> list[torch.Tensor | None]:
    """decode_jpeg on ``device`` as one batch; on a batch error, one by one (None = failed)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    if not tensors:
        return []
    try:
        return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        out: list[torch.Tensor | None] = []
        for t in tensors:
            try:
                out.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                out.append(None)
        return out


def decode_batch(blobs: Sequence[bytes], size: int, mean: Sequence[float], std: Sequence[float],
                 device: str, cpu_pixels: Callable[[int], np.ndarray | None]) -> tuple[
                     torch.Tensor | None, list[int], list[int]]:
    """Blobs -> normalised float32 NCHW on ``device``, in input order.

    Device-decodable JPEGs are decoded on ``device``; the rest, and any the
    device rejects, come from ``cpu_pixels(i)`` (uint8 HWC from the PIL path, or
    ``None`` when the CPU cannot decode it either). Returns the batch (rows only
    for images that decoded), the indices that took the CPU path, and the
    indices that failed on both (the caller records their reject reason).
    """
    on_device = [i for i, b in enumerate(blobs) if device_decodable(b)]
    decoded = dict(zip(on_device, _decode([blobs[i] for i in on_device], device), strict=True))
    rows: list[torch.Tensor] = []
    fallback, failed = [], []
    for i in range(len(blobs)):
        image = decoded.get(i)
        if image is not None:
            rows.append(resize_crop(image, size))
            continue
        fallback.append(i)
        pixels = cpu_pixels(i)
        if pixels is None:
            failed.append(i)
            continue
        rows.append(torch.from_numpy(np.array(pixels)).permute(2, 0, 1).to(device))
    batch = normalise(torch.stack(rows), mean, std) if rows else None
    return batch, fallback, failed


def device_decode_wanted(device: str) -> bool:
    """The device path is for CUDA only; on CPU, PIL in decode workers is as fast and exact."""
    return device.startswith("cuda") and torch.cuda.is_available()
