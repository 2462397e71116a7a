"""filters.codepoints counts exactly what RE2's count_substring_regex counts.

The reference is the regex version the Chinese-text rule used before (four
``count_substring_regex`` passes): any decoding slip (a 4-byte character, a
sliced or chunked array, a null slot with bytes under it) shows as a count
that differs from it.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
from hypothesis import given, settings
from hypothesis import strategies as st
from zhclip.filters.codepoints import CLASSES, class_counts
from zhclip.filters.language import not_chinese_reasons

# Han in the BMP and the supplementary planes, kana, Latin, Hangul, digits, several kinds of
# space (only ASCII ones are RE2's \s), emoji, combining marks, symbols, and anything else.
ALPHABET = st.one_of(
    st.sampled_from("一猫龍臺𠀀𪚥𫝀㐀〇のカヰーゝヽAz09٣Ⅻ한 \t\n\r\f\v\u3000\u00a0🎉😀́★~#，。"),
    st.characters(blacklist_categories=("Cs",)),
)
STRINGS = st.lists(st.one_of(st.none(), st.text(ALPHABET, max_size=24)), max_size=30)


def _reference(arr: pa.Array) -> dict[str, list[int]]:
    out = {name: pc.fill_null(pc.count_substring_regex(arr, pattern), 0).to_pylist()
           for name, pattern in CLASSES.items()}
    out["chars"] = pc.fill_null(pc.utf8_length(arr), 0).to_pylist()
    return out


def _reference_not_chinese(arr: pa.Array, kana_share: float = 0.2, text_share: float = 0.5) -> list:
    r = _reference(arr)
    out = []
    for i, valid in enumerate(arr.is_valid().to_pylist()):
        han, kana, text, visible = r["han"][i], r["kana"][i], r["text"][i], r["chars"][i] - r["space"][i]
        bad = han == 0 or (kana >= 2 and kana > (han + kana) * kana_share) or text < visible * text_share
        out.append("not_chinese" if valid and bad else None)
    return out


@settings(max_examples=300, deadline=None)
@given(STRINGS, st.integers(0, 5), st.booleans())
def test_counts_equal_re2_on_any_text(values, cut, large):
    arr = pa.array(values, pa.large_string() if large else pa.string())
    arr = arr.slice(min(cut, len(arr)))  # a non-zero array offset
    got = {k: v.tolist() for k, v in class_counts(arr).items()}
    assert got == _reference(arr)
    assert not_chinese_reasons(arr).to_pylist() == _reference_not_chinese(arr)


def test_a_null_slot_with_bytes_under_it_counts_zero():
    # Arrow lets a null slot span bytes; build one by hand: "猫猫" in a slot marked null.
    data = "猫猫一只猫".encode()
    offsets = pa.py_buffer(pa.array([0, 6, 15], pa.int32()).buffers()[1])
    validity = pa.py_buffer(bytes([0b10]))
    arr = pa.Array.from_buffers(pa.string(), 2, [validity, offsets, pa.py_buffer(data)])
    counts = class_counts(arr)
    assert counts["han"].tolist() == [0, 3] and counts["chars"].tolist() == [0, 3]


def test_chunked_arrays_count_across_chunks():
    arr = pa.chunked_array([["一只猫", None], ["かわいい", "Beautiful 😀"]])
    assert class_counts(arr)["han"].tolist() == [3, 0, 0, 0]
    assert class_counts(arr)["kana"].tolist() == [0, 0, 4, 0]
    assert class_counts(arr)["text"].tolist() == [3, 0, 4, 9]


@settings(max_examples=200, deadline=None)
@given(st.text(ALPHABET, max_size=60))
def test_the_numpy_decoder_agrees_with_python_on_valid_utf8(text):
    import numpy as np
    from zhclip.filters.codepoints import codepoints_of_bytes

    data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    assert codepoints_of_bytes(data).tolist() == [ord(ch) for ch in text]


def test_bytes_that_are_not_utf8_do_not_shift_the_other_rows():
    # pyarrow validates UTF-8 on pa.array, not on from_buffers (or every reader): a bad row
    # must neither crash the count nor move the next row's characters into it.
    data = b"\xff\xfe\x80" + "猫".encode() + "一只狗".encode()
    offsets = pa.py_buffer(pa.array([0, 6, 15], pa.int32()).buffers()[1])
    arr = pa.Array.from_buffers(pa.string(), 2, [None, offsets, pa.py_buffer(data)])
    counts = class_counts(arr)
    assert counts["han"].tolist()[1] == 3 and counts["chars"].tolist()[1] == 3
    assert counts["han"].tolist()[0] == 1


def test_no_class_has_a_member_above_the_classified_planes():
    import numpy as np
    from zhclip.filters.codepoints import CLASSIFIED_UP_TO, class_table, one_char_strings

    cps = np.arange(CLASSIFIED_UP_TO + 1, 0x110000, dtype=np.uint32)
    chars = one_char_strings(cps)
    for name, pattern in CLASSES.items():
        assert not pc.any(pc.match_substring_regex(chars, pattern)).as_py(), name
    assert not class_table()[CLASSIFIED_UP_TO + 1:].any()
    # and the table does classify the supplementary Han planes
    assert class_table()[0x20000] & 1 and class_table()[0x30000] & 1


def test_one_char_strings_hold_each_code_point():
    import numpy as np
    from zhclip.filters.codepoints import one_char_strings

    cps = np.array([0x41, 0x7F, 0x80, 0x7FF, 0x800, 0x732B, 0xFFFD, 0x10000, 0x2A6A5, 0x10FFFF], np.uint32)
    arr = one_char_strings(cps)
    arr.validate(full=True)
    assert arr.to_pylist() == [chr(c) for c in cps]
