"""Is a caption Chinese text? A vectorised check over Arrow string arrays.

LAION's LANGUAGE=zh label comes from automatic detection, so Japanese captions,
captions without any Chinese, and symbol junk reach stage 1 labelled zh. The
paper's pipeline assumes Chinese text; this rule checks it (beyond the paper,
switchable with ``filters.language.require_chinese``).

A caption is rejected as ``not_chinese`` when it has no Han character, when
kana make up more than ``max_kana_share`` of its Han + kana characters (and
there are at least two kana, so a stylistic "の" inside Chinese stays), or when
letters and digits are fewer than ``min_text_share`` of its non-space
characters. Traditional script is Han, so Traditional captions pass; English
brand names and numbers inside a Chinese caption are letters and digits, so
they pass too.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
from zhclip.pipeline.core.reasons import REASON_NOT_CHINESE

HAN = r"\p{Han}"
KANA = r"[\p{Hiragana}\p{Katakana}]"
TEXT = r"[\p{L}\p{N}]"
SPACE = r"\s"
MIN_KANA = 2


def _count(arr: pa.Array, pattern: str) -> pa.Array:
    return pc.fill_null(pc.count_substring_regex(arr, pattern), 0).cast(pa.float64())


def not_chinese_reasons(arr: pa.Array | pa.ChunkedArray, max_kana_share: float = 0.2,
                        min_text_share: float = 0.5) -> pa.Array:
    """``not_chinese`` per caption that fails the check, null where it passes (and for nulls)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    han = _count(arr, HAN)
    kana = _count(arr, KANA)
    text = _count(arr, TEXT)
    visible = pc.subtract(pc.fill_null(pc.utf8_length(arr), 0).cast(pa.float64()), _count(arr, SPACE))
    no_han = pc.equal(han, 0.0)
    japanese = pc.and_(pc.greater_equal(kana, float(MIN_KANA)),
                       pc.greater(kana, pc.multiply(pc.add(han, kana), max_kana_share)))
    symbols = pc.less(text, pc.multiply(visible, min_text_share))
    bad = pc.or_(pc.or_(no_han, japanese), symbols)
    bad = pc.and_(bad, pc.is_valid(arr))
    return pc.if_else(bad, pa.scalar(REASON_NOT_CHINESE), pa.scalar(None, pa.string()))


def is_chinese(caption: str, max_kana_share: float = 0.2, min_text_share: float = 0.5) -> bool:
    """Scalar form of :func:`not_chinese_reasons`, for tests and tools."""
    return not_chinese_reasons(pa.array([caption]), max_kana_share, min_text_share)[0].as_py() is None
