"""Caption normalisation and the paper's length rule.

The vectorised Arrow versions are what stage 1 runs (a Python loop over 100M+
captions would dominate the job); the per-string versions define the same
semantics for records and tests, and the two are checked against each other.
"""

from __future__ import annotations

import functools
import html
import re
import unicodedata

import pyarrow as pa
import pyarrow.compute as pc

# Control characters other than whitespace, and format characters (zero-width
# spaces/joiners, bidi marks, BOM). RE2 syntax (pyarrow) and Python re agree on these.
_DROP_RE2 = r"[\x{0000}-\x{0008}\x{000e}-\x{001f}\x{007f}-\x{009f}\p{Cf}]"
_SPACE_RE2 = r"[\s\x{000b}\p{Z}]+"
# Anything normalisation would change: a dropped character, whitespace other
# than a single inner ASCII space, or a leading/trailing space.
_DIRTY_RE2 = (
    r"[\x{0000}-\x{001f}\x{007f}-\x{009f}\p{Cf}\p{Zl}\p{Zp}\x{00a0}\x{1680}\x{2000}-\x{200a}"
    r"\x{202f}\x{205f}\x{3000}]|  |^ | $"
)
_SPACE_PY = re.compile(r"[\s\u000b\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+")


def _drop_char(ch: str) -> bool:
    if ch in "\t\n\r\x0b\x0c":
        return False
    return unicodedata.category(ch) in ("Cc", "Cf")


@functools.lru_cache(maxsize=1)
def _t2s():
    from opencc import OpenCC  # opencc-python-reimplemented

    return OpenCC("t2s")


def normalize_caption(text: str | None, traditional_to_simplified: bool = False) -> str | None:
    """Normalise one caption: HTML-unescape, drop control/zero-width characters,
    collapse whitespace (incl. ideographic space) to one ASCII space, strip.
    """
    if text is None:
        return None
    if "&" in text:
        text = html.unescape(text)
    text = "".join(ch for ch in text if not _drop_char(ch))
    text = _SPACE_PY.sub(" ", text).strip(" ")
    if traditional_to_simplified and text:
        text = _t2s().convert(text)
    return text


def normalize_captions(arr: pa.Array | pa.ChunkedArray, traditional_to_simplified: bool = False) -> pa.Array:
    """Arrow version of :func:`normalize_caption` (same results, vectorised)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.type != pa.string():
        arr = arr.cast(pa.string())
    # HTML entities are rare: unescape only the rows that can contain one.
    has_amp = pc.fill_null(pc.match_substring(arr, "&"), False)
    if pc.any(has_amp).as_py():
        idx = pc.indices_nonzero(has_amp)
        values = arr.to_pylist()
        for i in idx.to_pylist():
            values[i] = html.unescape(values[i])
        arr = pa.array(values, pa.string())
    # Most captions are already clean: find the others with one DFA pass and
    # run the rewriting kernels on those rows only.
    dirty = pc.fill_null(pc.match_substring_regex(arr, _DIRTY_RE2), False)
    if pc.any(dirty).as_py():
        sub = arr.filter(dirty)
        sub = pc.replace_substring_regex(sub, _DROP_RE2, "")
        sub = pc.replace_substring_regex(sub, _SPACE_RE2, " ")
        sub = pc.utf8_trim(sub, " ")
        arr = pc.replace_with_mask(arr, dirty, sub)
    if traditional_to_simplified:
        conv = _t2s()
        arr = pa.array([None if v is None else conv.convert(v) for v in arr.to_pylist()], pa.string())
    return arr


def caption_length_reason(text: str | None, min_chars: int, max_chars: int) -> str | None:
    """Reject reason for a normalised caption, or None to keep.

    Length counts Unicode code points, as the paper's 5..50 character rule does.
    """
    from zhclip.pipeline.core.reasons import (
        REASON_CAPTION_TOO_LONG,
        REASON_CAPTION_TOO_SHORT,
        REASON_EMPTY_CAPTION,
    )

    if not text:
        return REASON_EMPTY_CAPTION
    n = len(text)
    if n < min_chars:
        return REASON_CAPTION_TOO_SHORT
    if n > max_chars:
        return REASON_CAPTION_TOO_LONG
    return None


def caption_length_reasons(arr: pa.Array, min_chars: int, max_chars: int) -> pa.Array:
    """Arrow version of :func:`caption_length_reason`: null where the caption is kept."""
    from zhclip.pipeline.core.reasons import (
        REASON_CAPTION_TOO_LONG,
        REASON_CAPTION_TOO_SHORT,
        REASON_EMPTY_CAPTION,
    )

    length = pc.utf8_length(arr)
    empty = pc.fill_null(pc.equal(length, 0), True)
    short = pc.fill_null(pc.less(length, min_chars), False)
    long_ = pc.fill_null(pc.greater(length, max_chars), False)
    return pc.case_when(
        pc.make_struct(empty, short, long_),
        pa.scalar(REASON_EMPTY_CAPTION),
        pa.scalar(REASON_CAPTION_TOO_SHORT),
        pa.scalar(REASON_CAPTION_TOO_LONG),
        pa.scalar(None, pa.string()),
    )

