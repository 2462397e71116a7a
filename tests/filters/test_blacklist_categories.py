"""The category lists (issue 23): named sets in list files, the screening strings
that keep combined rules fast, and quality on the tuning set (the held-out set:
test_blacklist_heldout.py; COCO-CN: test_blacklist_quality.py)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from zhclip.blacklist.loader import load_entries, parse_list
from zhclip.filters.blacklist import BlacklistMatcher
from zhclip.filters.blacklist_patterns import required_literals, without_captures
from zhclip.filters.blacklist_quality import evaluate, list_of, parse_labelled

DATA = Path(__file__).resolve().parents[1] / "data"
SETS = ("blacklist_tuning.tsv", "blacklist_heldout.tsv", "blacklist_eval.tsv")


@pytest.fixture(scope="module")
def builtin() -> BlacklistMatcher:
    return BlacklistMatcher.from_lists()


@pytest.fixture(scope="module")
def captions() -> list[str]:
    """Every labelled caption, NFKC-folded as stage 1 folds them, plus spellings
    that only RE2's Unicode case folding matches (Kelvin sign, long s)."""
    rows = [
        r.caption
        for name in SETS
        for r in parse_labelled((DATA / name).read_text(encoding="utf-8"))
    ]
    folded = pc.utf8_normalize(pa.array(rows, pa.string()), "NFKC").to_pylist()
    return folded + [
        "\u212ag 5 元/斤",
        "\u017fcreenshot 2021",
        "IMG_1234.JPG",
        "ⅠMG_1234",
        "点击查看原图",
    ]


# ------------------------------------------------------------------ sets


def test_sets_expand_into_later_regexes_and_add_no_entry():
    entries = parse_list(
        "set(tap):点击|长按\nset(view):查看|{tap}看\nre(tap_to_view):{tap}\\s*{view}\n{tap}\n",
        "mine",
        "mine.txt",
    )
    assert [(e.kind, e.term) for e in entries] == [
        ("regex", "(?:点击|长按)\\s*(?:查看|(?:点击|长按)看)"),
        ("substring", "{tap}"),  # a plain line is text, never expanded
    ]
    matcher = BlacklistMatcher(entries)
    assert matcher.match_one("长按 查看大图") == "blacklist:mine:tap_to_view"
    assert matcher.match_one("孩子点击平板上的游戏") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("re(a):{tap}看\n", "line 1: set {tap} is not defined above this line"),
        ("re(a):x{view}\nset(view):查看\n", "line 1: set {view} is not defined"),
        ("set(tap):点击\nset(tap):长按\n", "line 2: set 'tap' is already defined"),
        ("set(Tap):点击\n", "set\\(<name>\\):<a>\\|<b>"),
        ("set(tap):\n", "line 1: empty set 'tap'"),
        ("set(tap):(点击\n", "invalid regex"),
    ],
)
def test_bad_set_lines_name_the_line(text, message):
    with pytest.raises(ValueError, match=message):
        parse_list(text, "mine", "mine.txt")


def test_shipped_lists_use_sets_and_every_category_is_there():
    shipped = {e.list_name for e in load_entries()}
    assert shipped == {
        "advertising",
        "call_to_action",
        "contact",
        "watermark",
        "filenames",
        "platform",
    }
    text = (
        Path(__file__).resolve().parents[2] / "blacklist" / "lists" / "call_to_action.txt"
    ).read_text(encoding="utf-8")
    assert text.count("set(") >= 5 and "{tap}" in text


# ------------------------------------------------------- screening strings


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("abc", ["abc"]),
        ("a|bc", ["a", "bc"]),
        ("x?y", ["y"]),
        ("(?:ab|cd)\\s*ef", ["ef"]),  # as long as the pair, and fewer strings
        ("(?:点击|长按)\\s*(?:查看|打开|进入)", ["点击", "长按"]),
        ("[¥￥]\\s*\\d", ["¥", "￥"]),
        ("\\d{13,}", None),  # no fixed text: run on every candidate row
        ("(?:^|\\s)ab", ["ab"]),
    ],
)
def test_required_literals(pattern, expected):
    assert required_literals(pattern) == expected


def test_every_match_of_a_shipped_regex_holds_one_of_its_strings(captions):
    lowered = [c.lower() for c in captions]
    checked = 0
    for entry in load_entries():
        if (
            entry.kind != "regex"
            or (strings := required_literals(without_captures(entry.term))) is None
        ):
            continue
        hits = pc.match_substring_regex(
            pa.array(captions), pattern=without_captures(entry.term), ignore_case=True
        ).to_pylist()
        for caption, low, hit in zip(captions, lowered, hits, strict=True):
            if hit and "\u212a" not in caption and "\u017f" not in caption:
                assert any(s.lower() in low for s in strings), (entry.label, caption, strings)
                checked += 1
    assert checked > 300


def test_screened_regexes_hit_exactly_where_re2_does(captions):
    """Each shipped regex alone, through the screened matcher, against plain RE2."""
    array = pa.array(captions)
    for entry in load_entries():
        if entry.kind != "regex":
            continue
        expected = pc.match_substring_regex(
            array, pattern=without_captures(entry.term), ignore_case=True
        )
        got = BlacklistMatcher([entry]).match_array(array)
        assert pc.is_valid(got).to_pylist() == expected.to_pylist(), entry.label


def test_a_screening_string_with_k_or_s_still_finds_unicode_case_variants():
    matcher = BlacklistMatcher(parse_list("re(kilo_price):kg\\s*\\d+\\s*元\n", "t", "t.txt"))
    # a Kelvin sign, which RE2's case folding reads as k
    assert matcher.match_one("\u212aG 5元") == "blacklist:t:kilo_price"


# ---------------------------------------------------------- categories


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        ("点此查看高清原图", "call_to_action"),
        ("喜欢就点个关注吧", "call_to_action"),
        ("转发并@三位好友 抽一人送台灯", "call_to_action"),
        ("打开APP看完整版", "call_to_action"),
        ("责任编辑：刘洋", "platform"),
        ("该帖子已被删除", "platform"),
        ("相关推荐 猜你喜欢", "platform"),
        ("第二件半价 券后价49", "advertising"),
        ("有需要的朋友请私信", "contact"),
        ("记者 王小川 摄", "watermark"),
        ("Snapseed_20200505", "filenames"),
        # verbs and objects the rules pair, used plainly
        ("孩子用手指点击平板上的动画", None),
        ("网友纷纷点赞救人的司机", None),
        ("编辑部里的记者在讨论选题", None),
        ("双十一期间快递员加班派件", None),
        ("滑雪的人从坡上往下滑", None),
        ("暴雨导致电力中断", None),
    ],
)
def test_each_category_on_new_phrasings(builtin, caption, expected):
    reason = builtin.match_one(caption)
    assert (None if reason is None else list_of(reason)) == expected, reason


def test_tuning_set_meets_the_targets(builtin):
    q = evaluate(
        parse_labelled((DATA / "blacklist_tuning.tsv").read_text(encoding="utf-8")), builtin
    )
    print("\n" + "\n".join(q.lines()))
    assert q.recall >= 0.95 and q.false_positive_rate <= 0.01
