"""Reject reasons read as words: named regex entries, and the matched text."""

from __future__ import annotations

import re

import pyarrow as pa
import pytest
from zhclip.blacklist.loader import (
    NAMED_REGEX,
    available_lists,
    load_entries,
    parse_list,
)
from zhclip.filters.blacklist import BlacklistMatcher
from zhclip.filters.rules import RuleSet, apply_rules
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.core.reasons import blacklist_reason
from zhclip.pipeline.sources.common import rows_table

SHORT_NAME = re.compile(r"[a-z0-9_]{2,32}")


@pytest.fixture(scope="module")
def builtin() -> BlacklistMatcher:
    return BlacklistMatcher(load_entries())


def test_every_shipped_regex_has_a_short_unique_name():
    """A reason must never be a raw pattern: an unnamed `re:` line in a shipped list fails here."""
    regexes = [e for e in load_entries() if e.kind == "regex"]
    assert len(regexes) > 50
    unnamed = [(e.list_name, e.term) for e in regexes if e.name is None]
    assert unnamed == []
    for name in available_lists():
        names = [e.name for e in load_entries([name]) if e.kind == "regex"]
        assert len(names) == len(set(names)), name
        assert all(SHORT_NAME.fullmatch(n) for n in names), names


@pytest.mark.parametrize("caption, reason, matched", [
    ("湖边小屋，房东13812345678", "blacklist:contact:mobile_number", "13812345678"),
    ("夏季连衣裙 满300减50", "blacklist:advertising:spend_x_save_y", "满300减50"),
    ("海边日落 IMG_20190801", "blacklist:filenames:img_number", "IMG_20190801"),
    ("摄影交流qq群", "blacklist:contact:QQ群", "qq群"),  # a literal names itself
])
def test_reason_names_the_rule_and_matched_gives_the_text(builtin, caption, reason, matched):
    captions = pa.array([caption, "窗外的雪景，很美。", None])
    reasons = builtin.match_array(captions)
    assert reasons.to_pylist() == [reason, None, None]
    assert builtin.matched_texts(captions, reasons).to_pylist() == [matched, None, None]


def test_named_and_unnamed_regex_lines():
    entries = parse_list("re(price_tag):[¥￥]\\s*\\d\nre:\\d+元起\n", "mine", "mine.txt")
    assert [(e.name, e.term) for e in entries] == [("price_tag", "[¥￥]\\s*\\d"), (None, "\\d+元起")]
    matcher = BlacklistMatcher(entries)
    assert matcher.match_one("只要￥9") == blacklist_reason("mine", "price_tag")
    assert matcher.match_one("99元起") == blacklist_reason("mine", "\\d+元起")  # user lists may omit names


@pytest.mark.parametrize("text, message", [
    ("re(Price):\\d元\n", "re\\(<name>\\):<pattern>"),
    ("re(a b):\\d元\n", "re\\(<name>\\):<pattern>"),
    ("re(tag):\n", "empty pattern after re\\(tag\\):"),
    ("re(tag):\\d元\nre(tag):\\d角\n", "line 2: regex name 'tag' is already used on line 1"),
    ("re(tag):(\\d\n", "invalid regex"),
])
def test_bad_named_regex_lines_name_the_line(text, message):
    with pytest.raises(ValueError, match=message):
        parse_list(text, "mine", "mine.txt")


def test_named_regex_pattern_may_hold_colons_and_parentheses():
    found = NAMED_REGEX.match("re(phone_label):(?:电话|tel)\\s*[:：]")
    assert found is not None and found.groups() == ("phone_label", "(?:电话|tel)\\s*[:：]")


def test_stage_1_rules_fill_the_matched_column():
    table = rows_table("mine", {
        S.SOURCE_ID: ["1", "2", "3"],
        S.URL: ["http://a.com/1.jpg", "http://a.com/2.jpg", "ftp://a.com/3.jpg"],
        S.CAPTION: ["联系ＱＱ：１２３４５６７８９购买", "窗外的雪景，很美。", "一只猫在沙发上睡觉"]})
    kept, rejects = apply_rules(table, RuleSet())
    assert kept.column(S.CAPTION).to_pylist() == ["窗外的雪景，很美。"]
    assert rejects.schema == S.REJECT_SCHEMA
    by_reason = {r[S.REASON]: r[S.MATCHED] for r in rejects.to_pylist()}
    # the earliest hit, as the NFKC-folded text the rule saw (ＱＱ -> QQ); other reasons: null
    assert by_reason == {"blacklist:contact:contact_us": "联系QQ", "invalid_url": None}
