"""Caption blacklists: reading list files (kinds, errors, config) and the regex helpers."""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from zhclip.blacklist.loader import BlacklistEntry, load_entries
from zhclip.filters.blacklist import BlacklistMatcher
from zhclip.filters.blacklist_patterns import literal_alternatives, without_captures
from zhclip.pipeline.core.config import BlacklistConfig


def test_from_config_reads_lists_and_extra_files(tmp_path):
    extra = tmp_path / "mine.txt"
    extra.write_text("橘猫\n", encoding="utf-8")
    matcher = BlacklistMatcher.from_config(
        BlacklistConfig(lists=["contact"], extra_files=[str(extra)])
    )
    assert {e.list_name for e in matcher.entries} == {"contact", "mine"}
    assert matcher.match_one("一只橘猫") == "blacklist:mine:橘猫"
    assert matcher.match_one("包邮") is None



# ---------------------------------------------------------------- loader


def test_loader_selects_lists_and_drops_repeats():
    ads = load_entries(["advertising"])
    assert ads and {e.list_name for e in ads} == {"advertising"}
    assert load_entries(["builtin", "advertising"]) == load_entries()
    assert load_entries([]) == []


def test_extra_files_use_the_file_stem_and_all_kinds(tmp_path):
    path = tmp_path / "my_ads.txt"
    path.write_text(
        "\ufeff# my own list\n\n  团购  \nre:\\bSKU\\d+\nword:京东\n# end\n", encoding="utf-8"
    )
    entries = load_entries([], [path])
    assert entries == [
        BlacklistEntry("my_ads", "substring", "团购"),
        BlacklistEntry("my_ads", "regex", r"\bSKU\d+"),
        BlacklistEntry("my_ads", "word", "京东"),
    ]
    both = load_entries(["builtin"], [str(path)])
    assert both[-3:] == entries and len(both) == len(load_entries()) + 3


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("re:(unclosed", "invalid regex"),
        ("re:(?<=a)b", "not valid RE2"),
        (r"re:(a)\1", "not valid RE2"),
        ("re:", "empty pattern"),
        ("re:a*", "empty text"),
        (r"re:\b", "empty text"),
        ("word:", "empty term"),
        ("word:两 个", "whitespace"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.txt"
    path.write_text(f"# comment\n好词\n{line}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=message) as info:
        load_entries([], [path])
    assert f"{path}, line 3" in str(info.value)


def test_unknown_list_and_missing_file_are_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown blacklist list 'adverts'.*advertising"):
        load_entries(["adverts"])
    with pytest.raises(ValueError, match="does not exist"):
        load_entries([], [tmp_path / "nope.txt"])
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        load_entries([], [latin1])
    with pytest.raises(TypeError):
        load_entries("builtin")


def test_every_shipped_regex_compiles_in_both_engines():
    for entry in load_entries():
        if entry.kind == "regex":
            re.compile(entry.term)
            pc.match_substring_regex(pa.array(["x"]), pattern=entry.term)


# ------------------------------------------------------- regex helpers


def test_literal_alternatives():
    assert literal_alternatives("(?:联系|咨询)电话") == ["联系电话", "咨询电话"]
    assert literal_alternatives("假一[赔罚]十") == ["假一赔十", "假一罚十"]
    assert literal_alternatives(r"\.com") == [".com"]
    for pattern in (r"a\d", "a+", "[a-z]", "a|", "^a", "(?i)a", "(a", "a{2}", "."):
        assert literal_alternatives(pattern) is None, pattern


def test_without_captures_keeps_meaning():
    assert without_captures(r"(a)(?P<x>b)(?:c)[(]\(") == r"(?:a)(?:b)(?:c)[(]\("
    assert without_captures(r"[]()](x)") == r"[]()](?:x)"
    pattern = r"(\d+)-(?P<y>[a-z]+)"
    for text in ("12-ab", "x-1", "3-Z"):
        assert bool(re.search(pattern, text)) == bool(re.search(without_captures(pattern), text))
