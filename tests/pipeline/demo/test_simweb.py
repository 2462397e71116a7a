"""The simulated web (pipeline.demo.simweb): its outcome mix, per-host connection limits,
realistic images and determinism, checked against the real server on loopback."""

from __future__ import annotations

import http.client
import io
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image
from zhclip.pipeline.demo.simweb import SimWeb
from zhclip.pipeline.demo.simweb_images import JpegTemplates
from zhclip.pipeline.demo.simweb_spec import (
    LIVE,
    OUTCOMES,
    host_address,
    host_specs,
    plan,
    url_host,
    url_path,
)

HOSTS = 6


@pytest.fixture(scope="module")
def web():
    with SimWeb(hosts=HOSTS, prewarm=False) as w:
        yield w


def _path(url: str) -> str:
    return "/" + url.split("/", 3)[3]


def _fetch(url: str, timeout: float = 5.0) -> tuple[str, bytes]:
    """(what happened, body): 'image', 'http:<code>', 'html', 'empty' or the error's name."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback
            kind = response.headers.get("Content-Type", "")
            body = response.read()
    except urllib.error.HTTPError as err:
        return f"http:{err.code}", b""
    except (OSError, http.client.HTTPException, ValueError) as err:
        return type(err).__name__, b""
    if not body:
        return "empty", body
    if kind.startswith("text/html"):
        return "html", body
    Image.open(io.BytesIO(body)).load()
    return "image", body


def test_the_planned_mix_matches_its_spec_on_a_sample():
    n = 8000
    counts = Counter(plan(url_path(i)).outcome for i in range(n))
    for outcome, share in OUTCOMES.items():
        assert abs(counts[outcome] / n - share) < 0.012, (outcome, counts[outcome] / n, share)
    live = sum(counts[o] for o in LIVE) / n
    assert 0.66 <= live <= 0.74, live


def test_images_have_realistic_shapes_and_formats():
    plans = [plan(url_path(i)) for i in range(4000)]
    widths = [p.width for p in plans]
    assert min(widths) >= 200 and max(widths) <= 2000
    fmts = Counter(p.fmt for p in plans)
    assert fmts["jpg"] > fmts["png"] > fmts["webp"] > 0
    jpegs = [p for p in plans if p.fmt == "jpg"]
    assert 0.04 < sum(p.progressive for p in jpegs) / len(jpegs) < 0.12
    assert any(p.cmyk for p in jpegs) and any(p.orientation != 1 for p in jpegs)


def test_assembled_jpegs_decode_differ_per_url_and_carry_exif():
    templates = JpegTemplates()
    a = templates.assemble("/i/1", 320, 240, False, 6)
    b = templates.assemble("/i/2", 320, 240, False, 1)
    ia, ib = Image.open(io.BytesIO(a)), Image.open(io.BytesIO(b))
    ia.load()
    ib.load()
    assert ia.size == ib.size == (320, 240)
    assert ia.getexif().get(0x0112) == 6 and ib.getexif().get(0x0112) is None
    assert ia.tobytes() != ib.tobytes()  # pixels, not just metadata, are the URL's own
    assert templates.assemble("/i/1", 320, 240, False, 6) == a
    cmyk = Image.open(io.BytesIO(templates.assemble("/i/3", 320, 240, True, 1)))
    assert cmyk.mode == "CMYK"


def test_hosts_are_loopback_and_shaped():
    specs = host_specs(40)
    assert len({s.address for s in specs}) == 40
    assert all(s.address.startswith("127.") for s in specs)
    assert specs[-1].connection_limit == 2 and specs[-1].median_latency >= 0.5
    assert host_address(0) != host_address(1)
    with pytest.raises(ValueError):
        host_specs(0)


EXPECTED = {
    "ok": {"image"},
    "slow": {"image"},
    "redirect": {"image"},
    "not_found": {"http:404"},
    "gone": {"http:410"},
    "server_error": {"http:500", "http:502", "http:503"},
    "html": {"html"},
    "empty": {"empty"},
    "truncated": {"IncompleteRead"},
    "reset": {"ConnectionResetError", "RemoteDisconnected", "URLError"},
    "redirect_loop": {"http:302"},
    "redirect_dead": {"http:404"},
}


def test_each_url_is_served_as_planned(web):
    # Small images only: the templates of a 2,000-pixel size take seconds to render cold.
    urls = [
        u for u in web.urls(600) if plan(_path(u)).outcome != "hang" and plan(_path(u)).width <= 640
    ][:120]
    with ThreadPoolExecutor(24) as pool:
        results = list(pool.map(lambda u: _fetch(u, timeout=30), urls))
    served = Counter()
    for url, (what, _) in zip(urls, results, strict=True):
        outcome = plan(_path(url)).outcome
        assert what in EXPECTED[outcome], (url, outcome, what)
        served[outcome] += 1
    assert served["ok"] > 50 and served["redirect"] and served["not_found"]
    stats = web.stats()
    assert stats["requests"] >= len(urls)


def test_a_hang_is_ended_by_the_client_timeout(web):
    url = next(u for u in web.urls(400) if plan(_path(u)).outcome == "hang")
    started = time.monotonic()
    what, _ = _fetch(url, timeout=0.5)
    assert what in ("TimeoutError", "URLError") and time.monotonic() - started < 3


def test_per_host_connection_limit_is_enforced(web):
    slow = host_specs(HOSTS)[-1]
    paths = [url_path(i) for i in range(3000) if plan(url_path(i)).outcome == "ok"][:8]
    urls = [f"http://{slow.address}:{web.port}{p}" for p in paths]
    web.reset()
    with ThreadPoolExecutor(len(urls)) as pool:
        results = list(pool.map(lambda u: _fetch(u, timeout=30), urls))
    assert all(what == "image" for what, _ in results)
    host = web.stats()["per_host"][slow.address]
    assert host["connections"] == len(urls)
    assert host["max_active"] == slow.connection_limit  # saturated, never over
    assert host["max_open"] > slow.connection_limit  # the others queued, and the web saw it


def test_answers_are_a_function_of_the_url_alone(web):
    url = next(u for u in web.urls(50) if plan(_path(u)).outcome == "ok")
    first = _fetch(url)[1]
    assert first and _fetch(url)[1] == first
    with SimWeb(hosts=HOSTS, prewarm=False) as other:
        assert other.url(7).split(":", 2)[1] == web.url(7).split(":", 2)[1]  # same host
        assert _fetch(other.url(int(url.rsplit("/", 1)[1].split(".")[0])))[1] == first
    assert url_host(7, HOSTS) == url_host(7, HOSTS)
