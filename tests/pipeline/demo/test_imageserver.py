"""The loopback image server answers as documented, over real HTTP."""

from __future__ import annotations

import http.client
import io
import socket
from urllib.parse import urlsplit

import pytest
from PIL import Image
from zhclip.pipeline.demo.imageserver import (
    FAULTS,
    METADATA_REDIRECT_TARGET,
    PRIVATE_REDIRECT_TARGET,
    ImageServer,
)


def get(url: str, timeout: float = 5.0) -> http.client.HTTPResponse:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""))
    return conn.getresponse()


@pytest.fixture(scope="module")
def server():
    with ImageServer(slow_seconds=1.0) as srv:
        yield srv


def test_listens_on_an_ephemeral_loopback_port(server):
    assert server.base_url.startswith("http://127.0.0.1:")
    assert server.port > 0


@pytest.mark.parametrize("fmt, pil", [("jpg", "JPEG"), ("png", "PNG"), ("webp", "WEBP")])
def test_generated_images_decode_and_are_deterministic(server, fmt, pil):
    r = get(server.image_url("cat", fmt, 40, 30))
    body = r.read()
    assert r.status == 200
    img = Image.open(io.BytesIO(body))
    assert img.format == pil and img.size == (40, 30)
    assert get(server.image_url("cat", fmt, 40, 30)).read() == body
    assert get(server.image_url("dog", fmt, 40, 30)).read() != body


def test_each_fault_misbehaves_as_described(server):
    def fault(kind):
        return get(server.fault_url(kind))

    assert fault("http_404").status == 404
    assert fault("http_500").status == 500
    r = fault("truncated_jpeg")
    body = r.read()
    assert r.status == 200 and body[:2] == b"\xff\xd8" and b"\xff\xd9" not in body[-2:]
    assert fault("html_body").read().lstrip().lower().startswith(b"<!doctype html")
    assert fault("empty_body").read() == b""
    bomb = fault("decompression_bomb").read()
    assert bomb[:8] == b"\x89PNG\r\n\x1a\n" and len(bomb) < 200
    r = fault("redirect_loop")
    assert r.status == 302 and r.getheader("Location") == FAULTS["redirect_loop"].path
    assert fault("redirect_private").getheader("Location") == PRIVATE_REDIRECT_TARGET
    assert fault("redirect_metadata").getheader("Location") == METADATA_REDIRECT_TARGET
    r = fault("robots_noai")
    assert r.getheader("X-Robots-Tag") == "noai"
    Image.open(io.BytesIO(r.read())).verify()
    r = fault("wrong_content_type")
    assert r.getheader("Content-Type") == "text/html"
    Image.open(io.BytesIO(r.read())).verify()


def test_slow_fault_is_slower_than_a_short_timeout(server):
    with pytest.raises(socket.timeout):
        get(server.fault_url("slow"), timeout=0.2).read()


def test_fail_next_and_fail_query_then_succeed(server):
    url = server.image_url("flaky-a")
    server.fail_next(url, 2)
    assert [get(url).status for _ in range(3)] == [503, 503, 200]
    url2 = server.image_url("flaky-b", fail=1)
    assert [get(url2).status for _ in range(2)] == [503, 200]
    assert server.request_count(url2) == 2


def test_redirect_endpoint_names_its_target_without_following(server):
    r = get(server.redirect_url("http://10.9.9.9/x"))
    assert r.status == 302 and r.getheader("Location") == "http://10.9.9.9/x"


def test_refuses_non_loopback_hosts_and_stops_cleanly():
    with pytest.raises(ValueError):
        ImageServer(host="0.0.0.0")
    srv = ImageServer().start()
    port = srv.port
    srv.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_server_in_a_child_process_serves_the_same_images():
    from zhclip.pipeline.demo.imageserver import ImageServerProcess, render_image

    with ImageServerProcess(slow_seconds=1.0) as srv:
        assert srv.base_url.startswith("http://127.0.0.1:")
        assert get(srv.image_url("cat", "png", 20, 10)).read() == render_image("cat", "png", 20, 10)
        assert get(srv.fault_url("http_500")).status == 500
