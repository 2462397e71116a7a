"""Stage-1 URL check and address guard on the spellings the red team found (issue 13)."""

from __future__ import annotations

import pytest
from zhclip.filters.addresses import embedded_ipv4, is_blocked_address, parse_ip
from zhclip.filters.urls import idna_host, splits_cleanly, url_reason, url_reasons
from zhclip.pipeline.core.reasons import REASON_INVALID_URL, REASON_PRIVATE_ADDRESS


@pytest.mark.parametrize("address", [
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::",  # 6to4 of 169.254.169.254
    "2002:0a00:0001:1234::5",  # 6to4 of 10.0.0.1
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo (server 65.54.227.120, client 192.0.2.45)
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
])
def test_ipv6_forms_embedding_a_private_ipv4_are_blocked(address):
    assert is_blocked_address(address)
    assert is_blocked_address(f"[{address}]")


def test_6to4_of_a_public_ipv4_is_not_blocked_and_allow_networks_reaches_inside():
    assert not is_blocked_address("2002:808:808::1")  # 6to4 of 8.8.8.8
    assert not is_blocked_address("2002:7f00:1::1", ["127.0.0.0/8"])
    assert is_blocked_address("2002:7f00:1::1", ["10.0.0.0/8"])


def test_embedded_ipv4_reads_each_form():
    assert [str(a) for a in embedded_ipv4(parse_ip("2002:c0a8:101::1"))] == ["192.168.1.1"]
    assert [str(a) for a in embedded_ipv4(parse_ip("2001:0:4136:e378:8000:63bf:3fff:fdd2"))] == [
        "65.54.227.120", "192.0.2.45"]
    assert embedded_ipv4(parse_ip("2606:4700::1111")) == ()
    assert embedded_ipv4(parse_ip("8.8.8.8")) == ()


@pytest.mark.parametrize(("url", "reason"), [
    # fullwidth digits and dots NFKC-fold to a loopback literal
    ("http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/a.jpg", REASON_PRIVATE_ADDRESS),
    ("http://\uff11\uff12\uff17\uff0e\uff10\uff0e\uff10\uff0e\uff11/a.jpg", REASON_PRIVATE_ADDRESS),
    ("http://\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54/a.jpg", REASON_PRIVATE_ADDRESS),
    ("http://[2002:7f00:1::1]/a.jpg", REASON_PRIVATE_ADDRESS),
    ("http://[1.2.3.4]/a.jpg", REASON_INVALID_URL),  # brackets are for IPv6 only
    ("http://a\uff03@example.com/a.jpg", REASON_INVALID_URL),  # fullwidth # in userinfo
    ("http://a\uff0f@example.com/a.jpg", REASON_INVALID_URL),  # fullwidth / in userinfo
    ("http://[2606:4700::1]:99999/a.jpg", REASON_INVALID_URL),
    ("http://example.com:99999/a.jpg", REASON_INVALID_URL),  # port out of range
    ("http://example.com:65536/a.jpg", REASON_INVALID_URL),
    ("http://例子..测试/a.jpg", REASON_INVALID_URL),  # empty label: no IDNA form
    ("http://" + "例" * 70 + ".cn/a.jpg", REASON_INVALID_URL),  # label over 63 once encoded
])
def test_stage1_rejects_what_stage2_would_refuse_or_misread(url, reason):
    assert url_reason(url) == reason


@pytest.mark.parametrize("url", [
    "http://例子.测试/图片.jpg",
    "https://\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.com/a.jpg",  # fullwidth letters: example.com
    "http://user:pw@example.com/a.jpg",
    "http://[2606:4700::1111]/a.jpg",
    "http://example.com:65535/a.jpg",
    "http://example.com:08080/a.jpg",
])
def test_stage1_keeps_international_and_unusual_but_valid_urls(url):
    assert url_reason(url) is None


def test_the_vectorised_and_single_checks_agree_on_a_mixed_batch():
    urls = ["http://example.com/a.jpg", "http://[1.2.3.4]/a.jpg", "http://例子.测试/a.jpg",
            "http://\uff11\uff12\uff17.0.0.1/", None]
    assert url_reasons(urls_array(urls)).to_pylist() == [url_reason(u) for u in urls]


def urls_array(urls):
    import pyarrow as pa

    return pa.array(urls, pa.string())


def test_idna_host_folds_encodes_and_checks_the_name():
    assert idna_host("例子.测试") == "xn--fsqu00a.xn--0zwm56d"
    assert idna_host("ＥＸＡＭＰＬＥ.com") == "example.com"
    assert idna_host("[::1]") == "[::1]"
    assert idna_host("a..b") is None
    assert idna_host("exa mple.com") is None
    assert idna_host("a" * 64 + ".com") is None


def test_splits_cleanly_matches_urllib():
    assert splits_cleanly("http://example.com:8080/a")
    assert not splits_cleanly("http://[1.2.3.4]/a")
    assert not splits_cleanly("http://example.com:abc/a")
    assert not splits_cleanly("http://a\uff03@example.com/")
