"""Caption normalisation, the length rule and URL checks (pure, no Beam)."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from zhclip.filters.text import (
    caption_length_reason,
    caption_length_reasons,
    normalize_caption,
    normalize_captions,
)
from zhclip.filters.urls import url_dedup_key, url_reason, url_reasons


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("  一只猫  在沙发上\n\t睡觉 ", "一只猫 在沙发上 睡觉"),
        ("红色\u200b的\ufeff花", "红色的花"),
        ("中文\u3000全角空格", "中文 全角空格"),
        ("鱼&amp;熊掌 &lt;b&gt;", "鱼&熊掌 <b>"),
        ("控制\x00字符\x07", "控制字符"),
        ("", ""),
    ],
)
def test_normalize_caption(raw, expected):
    assert normalize_caption(raw) == expected
    assert normalize_captions(pa.array([raw])).to_pylist() == [expected]


def test_traditional_to_simplified_is_optional():
    assert normalize_caption("這是一張圖片") == "這是一張圖片"
    assert normalize_caption("這是一張圖片", traditional_to_simplified=True) == "这是一张图片"
    assert normalize_captions(pa.array(["這是一張圖片"]), True).to_pylist() == ["这是一张图片"]


@pytest.mark.parametrize("n, reason", [(4, "caption_too_short"), (5, None), (50, None), (51, "caption_too_long")])
def test_length_bounds_in_code_points(n, reason):
    text = "猫" * n
    assert caption_length_reason(text, 5, 50) == reason
    assert caption_length_reasons(pa.array([text]), 5, 50).to_pylist() == [reason]
    # Astral-plane characters count as one each (code points, not UTF-16 units).
    emoji = "\U0001f431" * n
    assert caption_length_reason(emoji, 5, 50) == reason


def test_length_empty_and_null():
    assert caption_length_reasons(pa.array(["", None], pa.string()), 5, 50).to_pylist() == [
        "empty_caption", "empty_caption"]


ALPHABET = st.sampled_from(list("猫狗 \t\n\u3000\u200b\u200d\ufeff&;amplt#x41\x00\x07\x1fabcDEF一二三。，!"))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(ALPHABET, max_size=30), max_size=8))
def test_vectorised_normalisation_matches_per_string(texts):
    assert normalize_captions(pa.array(texts, pa.string())).to_pylist() == [normalize_caption(t) for t in texts]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.none(), st.text()), max_size=10))
def test_text_filters_never_raise(texts):
    arr = pa.array(texts, pa.string())
    out = normalize_captions(arr)
    assert len(out) == len(texts)
    reasons = caption_length_reasons(out, 5, 50)
    assert len(reasons) == len(texts)
    for t in texts:
        caption_length_reason(normalize_caption(t), 5, 50)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.none(), st.text(), st.from_regex(r"https?://[a-z0-9.:\[\]@-]{0,20}/?.{0,10}")), max_size=10))
def test_url_filters_never_raise(urls):
    reasons = url_reasons(pa.array(urls, pa.string()))
    assert len(reasons) == len(urls)
    assert set(reasons.to_pylist()) <= {None, "invalid_url", "private_address"}
    for u in urls:
        if u is not None:
            url_dedup_key(u)


@pytest.mark.parametrize(
    "url, reason",
    [
        ("http://example.com/a.jpg", None),
        ("https://img.example.com:8443/a.jpg?x=1", None),
        ("http://中文域名.cn/图片.jpg", None),
        ("ftp://example.com/a.jpg", "invalid_url"),
        ("file:///tmp/a.jpg", "invalid_url"),
        ("http:///a.jpg", "invalid_url"),
        ("http://exa mple.com/a.jpg", "invalid_url"),
        ("example.com/a.jpg", "invalid_url"),
        ("http://999.1.1.1/a.jpg", "invalid_url"),
        (None, "invalid_url"),
        ("http://127.0.0.1/a.jpg", "private_address"),
        ("http://localhost:8000/a.jpg", "private_address"),
        ("http://foo.localhost/a.jpg", "private_address"),
        ("http://10.1.2.3/a.jpg", "private_address"),
        ("http://172.16.0.1/a.jpg", "private_address"),
        ("http://192.168.0.1/a.jpg", "private_address"),
        ("http://169.254.169.254/latest/meta-data/", "private_address"),
        ("http://224.0.0.1/a.jpg", "private_address"),
        ("http://240.0.0.1/a.jpg", "private_address"),
        ("http://0.0.0.0/a.jpg", "private_address"),
        ("http://[::1]/a.jpg", "private_address"),
        ("http://[fe80::1]/a.jpg", "private_address"),
        ("http://[::ffff:127.0.0.1]/a.jpg", "private_address"),
        ("http://2130706433/a.jpg", "private_address"),  # 127.0.0.1 as one number
        ("http://0x7f.1/a.jpg", "private_address"),
        ("http://8.8.8.8/a.jpg", None),
    ],
)
def test_url_reason(url, reason):
    assert url_reason(url) == reason


def test_allow_networks_and_file_scheme():
    assert url_reason("http://127.0.0.1:8000/a.jpg", allow_networks=["127.0.0.0/8"]) is None
    assert url_reason("http://10.0.0.1/a.jpg", allow_networks=["127.0.0.0/8"]) == "private_address"
    assert url_reason("file:///data/coco/a.jpg", schemes=["http", "https", "file"]) is None
    with pytest.raises(ValueError, match="allow_networks"):
        url_reasons(pa.array(["http://a.com/"]), allow_networks=["not-a-network"])


def test_dedup_key_normalises_spelling_not_path():
    assert url_dedup_key("HTTP://Example.COM:80/a.jpg#frag") == "http://example.com/a.jpg"
    assert url_dedup_key("https://example.com:443") == "https://example.com/"
    assert url_dedup_key("http://example.com/A.jpg") != url_dedup_key("http://example.com/a.jpg")
    assert url_dedup_key("http://example.com:8080/a") == "http://example.com:8080/a"
    assert url_dedup_key("not a url") == "not a url"
