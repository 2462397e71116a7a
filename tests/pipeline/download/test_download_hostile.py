"""Stage 2 against hostile input: poison URLs, dripping and lying servers, bombs, IDN, 6to4.

Everything runs against the real loopback server (pipeline.demo.imageserver)
through the real guarded fetch; the two decompression bombs go through the
real img2dataset Resizer behind zhclip's header check, in a child process
whose peak RSS is measured.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from zhclip.pipeline.core.reasons import (
    INVALID_URL,
    PRIVATE_ADDRESS,
    RESPONSE_TOO_LARGE,
    SCHEME_NOT_ALLOWED,
    TIMEOUT,
    TOO_LARGE,
)
from zhclip.pipeline.demo.imageserver import (
    ImageServer,
    jpeg_with_junk_before_sof,
    render_image,
    rle_bmp_bomb,
)
from zhclip.pipeline.download import fetch as F
from zhclip.pipeline.download import guard
from zhclip.pipeline.download.errors import classify_error

LOOPBACK = ("127.0.0.0/8",)

# URLs that once raised out of download_image (and so killed the whole job), or
# that a parser may read in two ways.
POISON_URLS = [
    "http://[1.2.3.4]/a.jpg",  # brackets around IPv4: urlsplit raises ValueError
    "http://a\uff03@127.0.0.1/a.jpg",  # fullwidth # in userinfo: NFKC check raises
    "http://user\uff0f@example.com/a.jpg",  # fullwidth / in userinfo
    "http://[::1/a.jpg",  # unclosed bracket
    "http://example.com:99999/a.jpg",  # port out of range
    "http://example.com:abc/a.jpg",  # port not a number
    "http:///a.jpg",  # no host
    "http://" + "a" * 300 + ".com/a.jpg",  # host longer than DNS allows
    "http://" + "\u4f8b" * 3 + ".cn/\ud800",  # a lone surrogate in the path
    "http://exa mple.com/a.jpg",  # space in the host
    "http://例子..测试/a.jpg",  # empty IDNA label
    "javascript:alert(1)",
    "",
    None,
    12345,
]


@pytest.fixture(scope="module")
def server():
    with ImageServer(drip_interval=0.2, drip_bytes=600, chunked_bytes=8 << 20) as srv:
        yield srv


def fetch(url, allow=LOOPBACK, timeout: float = 1.0, deadline: float | None = None,
          max_bytes: int = F.MAX_RESPONSE_BYTES):
    policy = F.FetchPolicy(allow_networks=tuple(allow), deadline=deadline,
                           max_response_bytes=max_bytes)
    return F.make_fetch_function(policy)(("k", url), timeout, None, None)


def fetch_within(limit: float, *args, **kwargs):
    """fetch(...) in a thread; (result, seconds), failing if it is not back within ``limit``."""
    box: dict = {}

    def go():
        started = time.monotonic()
        box["result"] = fetch(*args, **kwargs)
        box["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), f"the fetch still held its thread after {limit} s"
    return box["result"], box["seconds"]


# --- item 1: every URL ends in a recorded reason ------------------------------------


@pytest.mark.parametrize("url", POISON_URLS, ids=lambda u: repr(u)[:30])
def test_poison_urls_end_as_a_recorded_reason(url):
    key, stream, error = fetch(url, allow=())
    assert key == "k" and stream is None
    assert classify_error(error) in {INVALID_URL, SCHEME_NOT_ALLOWED}, error


def test_userinfo_is_not_sent_and_not_mistaken_for_the_host(server):
    url = server.image_url("ui").replace("http://", "http://evil.example@")
    _, stream, error = fetch(url)
    assert error is None and stream is not None
    assert server.host_headers["/img/ui.jpg"] == f"127.0.0.1:{server.port}"


# --- item 2: a total deadline, and a byte cap on the bytes read ---------------------------


@pytest.mark.parametrize("kind", ["drip_headers", "drip_body"])
def test_dripping_response_is_cut_by_the_total_deadline(server, kind):
    # Each byte comes 0.2 s after the last, well inside the 1 s read timeout:
    # only a deadline on the whole image stops it (the drip lasts 120 s).
    (_, stream, error), seconds = fetch_within(10, server.hostile_url(kind), timeout=1.0,
                                               deadline=2.0)
    assert stream is None and classify_error(error) == TIMEOUT, error
    assert "download.deadline" in error
    assert 1.9 <= seconds < 3.5, seconds


def test_the_fetch_clock_records_the_longest_fetch_against_its_deadline(server):
    fetch_fn = F.make_fetch_function(F.FetchPolicy(allow_networks=LOOPBACK, deadline=1.5))
    assert fetch_fn(("a", server.image_url("clock")), 1.0, None, None)[2] is None
    quick = fetch_fn.clock.longest_s
    assert 0 < quick < 1.0
    _, stream, error = fetch_fn(("b", server.hostile_url("drip_body")), 1.0, None, None)
    assert stream is None and "download.deadline" in error
    # The drip is cut at the deadline: the longest fetch is the deadline, plus the watchdog's tick.
    assert fetch_fn.clock.deadline_s == 1.5
    assert 1.4 <= fetch_fn.clock.longest_s < 2.5, fetch_fn.clock.longest_s


def test_deadline_defaults_to_a_multiple_of_the_timeout(server):
    (_, stream, error), seconds = fetch_within(10, server.hostile_url("drip_body"), timeout=0.8)
    assert stream is None and classify_error(error) == TIMEOUT
    assert 0.8 * F.DEADLINE_TIMEOUTS - 0.1 <= seconds < 0.8 * F.DEADLINE_TIMEOUTS + 1.5


def test_a_good_image_is_untouched_by_the_deadline_watchdog(server):
    for i in range(20):  # sockets of finished fetches must not be shut down later
        _, stream, error = fetch(server.image_url(f"ok{i}"), deadline=0.5)
        assert error is None and stream.getvalue() == server.image_bytes(f"ok{i}", "jpg", 96, 72)
    time.sleep(0.6)
    _, stream, error = fetch(server.image_url("after"), deadline=0.5)
    assert error is None


def test_chunked_body_with_a_small_content_length_is_capped_by_bytes_read(server):
    # "Content-Length: 1000" and then 8 MiB of chunks: the cap must count what arrives.
    (_, stream, error), _ = fetch_within(20, server.hostile_url("chunked_small_length"),
                                         timeout=5.0, max_bytes=1 << 20)
    assert stream is None and classify_error(error) == RESPONSE_TOO_LARGE, error


# --- item 7: IDNA hosts, 6to4 and Teredo -----------------------------------------------------


def test_idn_host_is_resolved_and_sent_in_its_idna_form(server, monkeypatch):
    asked: list[str] = []

    def resolve(host, port, *rest):
        asked.append(host)
        if host != "xn--fsqu00a.xn--0zwm56d":
            raise socket.gaierror(socket.EAI_NONAME, f"test resolver knows no {host!r}")
        return socket.getaddrinfo("127.0.0.1", port, *rest)

    monkeypatch.setattr(guard, "resolve", resolve)
    _, stream, error = fetch(f"http://例子.测试:{server.port}/img/猫.jpg")
    assert error is None, error
    assert asked == ["xn--fsqu00a.xn--0zwm56d"]
    assert server.host_headers["/img/%E7%8C%AB.jpg"] == f"xn--fsqu00a.xn--0zwm56d:{server.port}"
    assert stream.getvalue() == server.image_bytes("%E7%8C%AB", "jpg", 96, 72)


@pytest.mark.parametrize("address", [
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254 (cloud metadata)
    "2002:c0a8:101::1",  # 6to4 of 192.168.1.1
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
])
def test_6to4_teredo_and_nat64_forms_of_private_ipv4_are_refused(server, monkeypatch, address):
    connected: list = []
    monkeypatch.setattr(guard, "resolve", lambda host, port, *rest: [
        (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0))])
    monkeypatch.setattr(socket.socket, "connect", lambda self, addr: connected.append(addr))
    for url in (f"http://[{address}]:{server.port}/a.jpg", f"http://six.example:{server.port}/a.jpg"):
        _, stream, error = fetch(url, allow=())
        assert stream is None and classify_error(error) == PRIVATE_ADDRESS, error
    assert connected == []


# --- item 3: bombs refused before decoding, memory measured -------------------------------

_RSS_SCRIPT = r"""
import io, json, sys
from zhclip.pipeline.core.memory import peak_rss_mb
from zhclip.pipeline.core.config import DownloadConfig
from zhclip.pipeline.download.img2dataset_glue import CheckedResizer, build_resizer
from zhclip.pipeline.demo.imageserver import jpeg_with_junk_before_sof, render_image, rle_bmp_bomb
dcfg = DownloadConfig(image_size=32)
resizer = CheckedResizer(build_resizer(dcfg), dcfg.max_image_area)
resizer(io.BytesIO(render_image("warm")))  # load codecs before the baseline
bombs = {"jpeg_junk_before_sof": jpeg_with_junk_before_sof(render_image("x")), "rle_bmp_bomb": rle_bmp_bomb()}
out = {}
for name, data in bombs.items():
    before = peak_rss_mb()  # VmHWM: ru_maxrss would start at pytest's own peak and hide any growth
    error = resizer(io.BytesIO(data))[-1]
    out[name] = {"error": error, "bytes": len(data), "rss_growth_mb": peak_rss_mb() - before}
print(json.dumps(out))
"""


def test_bomb_images_are_refused_before_decoding_with_bounded_memory():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _RSS_SCRIPT], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    print("bomb RSS growth:", results)
    for name, r in results.items():
        assert classify_error(r["error"]) == TOO_LARGE, (name, r)
        assert r["rss_growth_mb"] < 20, (name, r)  # decoding them costs 400 MB to 1.2 GB
        assert r["bytes"] < 4096


def test_bombs_claim_what_they_should():
    from zhclip.filters.image_header import header_size

    assert header_size(jpeg_with_junk_before_sof(render_image("x"))) == (20_000, 20_000)
    assert header_size(rle_bmp_bomb()) == (15_000, 15_000)


# --- item 11: no network call on import ------------------------------------------------------

_NO_NETWORK_SCRIPT = r"""
import socket, sys
calls = []
def refuse(*args, **kwargs):
    calls.append(repr(args)[:80])
    raise OSError("network disabled in this test")
socket.getaddrinfo = refuse
socket.create_connection = refuse
socket.socket.connect = lambda self, *a: refuse(*a)
import zhclip.pipeline  # what every zhclip command imports first
import img2dataset.downloader, img2dataset.resizer  # albumentations comes with them
print("CALLS", calls)
"""


def test_importing_img2dataset_after_zhclip_makes_no_network_call():
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    done = subprocess.run([sys.executable, "-c", _NO_NETWORK_SCRIPT], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "CALLS []" in done.stdout, done.stdout + done.stderr[-1000:]


# --- item 1: fuzzing download_image ----------------------------------------------------------

_URLISH = st.builds(
    lambda scheme, userinfo, host, port, path: f"{scheme}://{userinfo}{host}{port}{path}",
    st.sampled_from(["http", "https", "HTTP", "ftp", "file", ""]),
    st.sampled_from(["", "u@", "u:p@", "a\uff03@", "@", "x\uff0f@"]),
    st.one_of(st.text(max_size=20), st.sampled_from(
        ["[1.2.3.4]", "[::1", "[2002:7f00:1::1]", "例子.测试", "１２７.０.０.１", "127.0.0.1"])),
    st.sampled_from(["", ":80", ":99999", ":x", ":"]),
    st.text(max_size=20),
)


@settings(max_examples=300, deadline=None)
@given(url=st.one_of(st.text(max_size=60), _URLISH))
def test_download_image_never_raises_and_always_names_a_reason(url):
    def no_dns(host, *args):
        raise socket.gaierror(socket.EAI_NONAME, "fuzzing: no DNS")

    original = guard.resolve
    guard.resolve = no_dns  # hypothesis runs examples without function-scoped fixtures
    try:
        key, stream, error = fetch(url, allow=(), timeout=0.2, deadline=0.5)
    finally:
        guard.resolve = original
    assert key == "k" and stream is None and isinstance(error, str) and error
