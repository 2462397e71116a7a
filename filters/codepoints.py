"""Per-string counts of character classes, from one decode of a column's UTF-8 bytes.

The Chinese-text rule needs, for every caption, how many characters are Han,
kana, letters or digits, and whitespace. Four RE2 ``count_substring_regex``
passes with Unicode classes cost about 30% of stage 1; decoding the bytes to
code points once (CPython's codec) and looking each up in a table costs a few
percent. The table is built by asking RE2 itself about each code point (planes 0-3; none above is in a class), so
the classes are the regex definitions exactly (``\\s`` is RE2's ASCII whitespace, ``\\p{Han}``
follows pyarrow's Unicode tables), not an approximation of them.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

CLASSES = {
    "han": r"\p{Han}",
    "kana": r"[\p{Hiragana}\p{Katakana}]",
    "text": r"[\p{L}\p{N}]",
    "space": r"\s",
}
_MAX_CP = 0x10FFFF
# Planes 4-16 hold no Han, kana, letter, digit or space (only tags, variation selectors and
# private use), so the table asks RE2 about planes 0-3 only: a quarter of the start-up cost.
# tests/filters/test_codepoints.py checks the claim against RE2 for every code point above.
CLASSIFIED_UP_TO = 0x3FFFF
# _BIT_OF_PATTERN[p, b] = 1 when class bit b is set in the 4-bit pattern p.
_BIT_OF_PATTERN = np.array([[p >> b & 1 for b in range(4)] for p in range(16)], dtype=np.int64)


@lru_cache(maxsize=1)
def class_table() -> np.ndarray:
    """uint8 bit set per code point: bit i set when the code point is in CLASSES' i-th class."""
    cps = np.arange(CLASSIFIED_UP_TO + 1, dtype=np.uint32)
    cps = cps[(cps < 0xD800) | (cps > 0xDFFF)]  # surrogates are not characters
    chars = one_char_strings(cps)
    table = np.zeros(_MAX_CP + 1, dtype=np.uint8)
    for bit, pattern in enumerate(CLASSES.values()):
        hit = pc.match_substring_regex(chars, pattern).to_numpy(zero_copy_only=False)
        table[cps[hit]] |= np.uint8(1 << bit)
    return table


def one_char_strings(cps: np.ndarray) -> pa.Array:
    """A string array holding each code point as a string of its own, built from buffers
    (``pa.array(list(...))`` spends most of the table's build time on Python objects)."""
    utf8_len = 1 + (cps >= 0x80).astype(np.int32) + (cps >= 0x800) + (cps >= 0x10000)
    offsets = np.concatenate([[0], np.cumsum(utf8_len, dtype=np.int32)]).astype(np.int32)
    data = cps.astype("<u4").tobytes().decode("utf-32-le").encode("utf-8")
    return pa.Array.from_buffers(pa.string(), len(cps), [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _offsets_and_bytes(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    if not pa.types.is_string(arr.type) and not pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.large_string())
    width = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    _, off_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(off_buf, dtype=width)[arr.offset: arr.offset + len(arr) + 1].astype(np.int64)
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    data = data[offsets[0]: offsets[-1]]
    return offsets - offsets[0], data


def codepoints_of_bytes(data: np.ndarray) -> np.ndarray:
    """Code points of UTF-8 bytes, decoded in numpy (no validation: any bytes give some value)."""
    lead = (data & 0xC0) != 0x80  # the first byte of each character
    idx = np.flatnonzero(lead)
    padded = np.concatenate([data, np.zeros(3, np.uint8)])
    b0 = padded[idx].astype(np.uint32)
    b1, b2, b3 = (padded[idx + k].astype(np.uint32) & 0x3F for k in (1, 2, 3))
    cp = np.where(b0 < 0x80, b0,
         np.where(b0 < 0xE0, ((b0 & 0x1F) << 6) | b1,
         np.where(b0 < 0xF0, ((b0 & 0x0F) << 12) | (b1 << 6) | b2,
                  ((b0 & 0x07) << 18) | (b1 << 12) | (b2 << 6) | b3)))
    return np.minimum(cp, _MAX_CP, out=cp)


def _codepoints(data: np.ndarray) -> np.ndarray:
    """Code points of a string array's bytes: CPython's UTF-8 codec (about twice as fast as
    decoding in numpy), or the numpy decoder where the bytes are not valid UTF-8."""
    try:
        return np.frombuffer(data.tobytes().decode("utf-8").encode("utf-32-le"), dtype=np.uint32)
    except UnicodeDecodeError:
        return codepoints_of_bytes(data)


def class_counts(arr: pa.Array | pa.ChunkedArray) -> dict[str, np.ndarray]:
    """For each string: its length in characters (``chars``) and how many fall in each class.

    Null entries count 0 whatever bytes their slot spans.
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.null_count:
        arr = arr.fill_null("")  # a null slot may span bytes; an empty string spans none
    offsets, data = _offsets_and_bytes(arr)
    cp = _codepoints(data)
    # Characters before each row: lead bytes before its offset (every row starts on one).
    lead_at = np.flatnonzero((data & 0xC0) != 0x80)
    chars = np.diff(np.searchsorted(lead_at, offsets))
    bits = class_table()[cp]
    # One histogram of (row, class bits) over all characters, then each class's column sum.
    rows = np.repeat(np.arange(len(chars)), chars)
    grid = np.bincount(rows * 16 + bits, minlength=len(chars) * 16).reshape(len(chars), 16)
    per_class = grid @ _BIT_OF_PATTERN
    out = {"chars": chars}
    for bit, name in enumerate(CLASSES):
        out[name] = per_class[:, bit]
    return out
