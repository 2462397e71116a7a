"""The blacklist measured on a labelled set written for the project, and on COCO-CN's human captions.

Targets (issue 14): false positives at most 1% of clean captions, recall at
least 95% of junk; none of COCO-CN's human captions rejected (issue 23); every
tricky clean caption (short terms inside longer words, ads described in a
picture) kept.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from zhclip.filters.blacklist import BlacklistMatcher
from zhclip.filters.blacklist_quality import evaluate, list_of, parse_labelled, reasons_for

EVAL = Path(__file__).resolve().parents[1] / "data" / "blacklist_eval.tsv"


@pytest.fixture(scope="module")
def matcher() -> BlacklistMatcher:
    return BlacklistMatcher.from_lists(["builtin"])


@pytest.fixture(scope="module")
def rows():
    return parse_labelled(EVAL.read_text(encoding="utf-8"))


def test_labelled_set_is_big_enough_and_covers_every_list(rows):
    clean = [r for r in rows if r.label == "clean"]
    junk = [r for r in rows if r.label == "junk"]
    assert len(clean) >= 400 and len(junk) >= 200
    assert {r.list_name for r in junk} == {"advertising", "filenames", "watermark", "contact"}
    assert len({r.caption for r in rows}) == len(rows)  # no caption counted twice


def test_precision_and_recall_meet_the_targets(rows, matcher):
    q = evaluate(rows, matcher)
    print("\n" + "\n".join(q.lines()))
    assert q.false_positive_rate <= 0.01, q.false_positives
    assert q.recall >= 0.95, q.missed
    for name in ("advertising", "filenames", "watermark", "contact"):
        assert q.list_recall(name) >= 0.9 and q.precision(name) >= 0.95, name


def test_every_tricky_clean_caption_is_kept(rows, matcher):
    tricky = [r for r in rows if r.label == "clean" and r.list_name != "-"]
    assert len(tricky) >= 60
    hits = [(r.caption, x) for r, x in zip(tricky, reasons_for([r.caption for r in tricky], matcher),
                                           strict=True) if x]
    assert hits == []


@pytest.mark.parametrize(("caption", "expected"), [
    ("妈妈把面包邮寄给女儿", None), ("把书包邮寄给山区的孩子", None), ("一辆印着广告的公共汽车", None),
    ("他用微信和朋友视频聊天", None), ("门口有一个红色的邮箱", None),
    ("全国包邮 下单立减", "advertising"), ("满99包邮", "advertising"), ("图片仅供参考，以实物为准", "advertising"),
    ("广告位招租", "advertising"), ("加微信领取福利", "contact"), ("全场打折促销", "advertising"),
    ("邮箱：a@b.com", "contact"),
])
def test_narrowed_terms(matcher, caption, expected):
    reason = reasons_for([caption], matcher)[0]
    assert (None if reason is None else list_of(reason)) == expected


def test_coco_cn_human_captions_none_rejected(shared_fixtures, matcher):
    """Issue 23: the category lists reject no more of them than the phrase lists did (0 of 4,712)."""
    path = shared_fixtures / "coco-cn" / "coco-cn_ext.icap2020.txt"
    captions = [line.split("\t", 1)[1].strip() for line in path.read_text(encoding="utf-8").splitlines()
                if "\t" in line]
    rejected = [(c, r) for c, r in zip(captions, reasons_for(captions, matcher), strict=True) if r]
    print(f"\nCOCO-CN: {len(rejected)} of {len(captions)} rejected")
    assert len(captions) == 4712 and rejected == []


def test_bad_line_is_a_clear_error():
    with pytest.raises(ValueError, match="line 2"):
        parse_labelled("clean\t-\t一只猫\nnot a labelled line\n")
