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
from zhclip.filters.codepoints import class_counts
from zhclip.pipeline.core.reasons import REASON_NOT_CHINESE

MIN_KANA = 2


def not_chinese_reasons(arr: pa.Array | pa.ChunkedArray, max_kana_share: float = 0.2,
                        min_text_share: float = 0.5) -> pa.Array:
    """``not_chinese`` per caption that fails the check, null where it passes (and for nulls).

    Character classes are RE2's ``\\p{Han}``, ``[\\p{Hiragana}\\p{Katakana}]``,
    ``[\\p{L}\\p{N}]`` and ``\\s``, counted in one pass (filters.codepoints).
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    c = class_counts(arr)
    han, kana, text = c["han"], c["kana"], c["text"]
    visible = c["chars"] - c["space"]
    no_han = han == 0
    japanese = (kana >= MIN_KANA) & (kana > (han + kana) * max_kana_share)
    symbols = text < visible * min_text_share
    bad = (no_han | japanese | symbols) & arr.is_valid().to_numpy(zero_copy_only=False)
    return pc.if_else(pa.array(bad), pa.scalar(REASON_NOT_CHINESE), pa.scalar(None, pa.string()))


def is_chinese(caption: str, max_kana_share: float = 0.2, min_text_share: float = 0.5) -> bool:
    """Scalar form of :func:`not_chinese_reasons`, for tests and tools."""
    return not_chinese_reasons(pa.array([caption]), max_kana_share, min_text_share)[0].as_py() is None
