"""Pure checks used by stage 2: address guard, error classes, image header checks."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image
from zhclip.filters.addresses import AllowNetworkError, is_blocked_address, parse_ip
from zhclip.filters.image_header import check_image_bytes, header_size, is_truncated, sniff_format
from zhclip.pipeline.core.reasons import (
    BAD_ASPECT_RATIO,
    CONNECTION,
    DISALLOWED_BY_HEADER,
    DNS,
    EMPTY_BODY,
    HTTP_3XX,
    HTTP_4XX,
    HTTP_5XX,
    INVALID_IMAGE,
    INVALID_URL,
    NOT_AN_IMAGE,
    OTHER,
    PRIVATE_ADDRESS,
    REDIRECT_LOOP,
    TIMEOUT,
    TOO_LARGE,
    TOO_SMALL,
    TRUNCATED_IMAGE,
    tagged,
)
from zhclip.pipeline.demo.imageserver import decompression_bomb_png, render_image
from zhclip.pipeline.download.errors import classify_error


@pytest.mark.parametrize(
    "ip",
    [
        "127.0.0.1", "127.8.9.10", "10.0.0.1", "172.16.5.4", "192.168.1.1",
        "169.254.169.254", "0.0.0.0", "224.0.0.1", "239.255.255.250", "240.0.0.1",
        "100.64.0.1", "::1", "fe80::1", "fe80::1%eth0", "fc00::1", "::ffff:10.0.0.1",
        "::ffff:127.0.0.1", "ff02::1", "::", "255.255.255.255", "[::1]",
    ],
)
def test_non_public_addresses_are_blocked(ip):
    assert is_blocked_address(ip, [])


@pytest.mark.parametrize("ip", ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700::1111"])
def test_public_addresses_pass(ip):
    assert not is_blocked_address(ip, [])


def test_allow_networks_lifts_the_guard_only_for_listed_networks():
    allow = ["127.0.0.0/8"]
    assert not is_blocked_address("127.0.0.1", allow)
    assert not is_blocked_address("127.3.2.1", allow)
    assert is_blocked_address("10.0.0.1", allow)
    assert is_blocked_address("::1", allow)  # an IPv4 network does not cover IPv6 loopback
    assert not is_blocked_address("::1", ["::1/128"])
    assert not is_blocked_address("169.254.169.254", ["169.254.169.254/32"])


def test_names_must_be_resolved_first_and_bad_networks_are_named():
    assert is_blocked_address("localhost", ["127.0.0.0/8"])
    assert parse_ip("example.com") is None
    with pytest.raises(AllowNetworkError, match="not-a-net"):
        is_blocked_address("10.0.0.1", ["not-a-net"])


@pytest.mark.parametrize(
    "message, cls",
    [
        ("HTTP Error 404: Not Found", HTTP_4XX),
        ("HTTP Error 403: Forbidden", HTTP_4XX),
        ("HTTP Error 503: Service Unavailable", HTTP_5XX),
        ("HTTP Error 301: Moved", HTTP_3XX),
        ("HTTP Error 302: The HTTP server returned a redirect error that would lead to an "
         "infinite loop.\nThe last 30x error message was:\nFound", REDIRECT_LOOP),
        ("timed out", TIMEOUT),
        ("TimeoutError: timed out", TIMEOUT),
        ("The read operation timed out", TIMEOUT),
        ("[Errno -2] Name or service not known", DNS),
        ("[Errno -3] Temporary failure in name resolution", DNS),
        ("[Errno 111] Connection refused", CONNECTION),
        ("Remote end closed connection without response", CONNECTION),
        ("Use of image disallowed by X-Robots-Tag directive", DISALLOWED_BY_HEADER),
        ("unknown url type: 'ftp'", INVALID_URL),
        ("image too small", TOO_SMALL),
        ("image area too large", TOO_LARGE),
        ("aspect ratio too large", BAD_ASPECT_RATIO),
        ("Image decoding error", INVALID_IMAGE),
        ("OpenCV(4.14.0) loadsave.cpp: error: (-215:Assertion failed) !buf.empty()", EMPTY_BODY),
        (tagged(PRIVATE_ADDRESS, "10.0.0.1 ..."), PRIVATE_ADDRESS),
        (tagged(TRUNCATED_IMAGE, "timed out in text must not matter"), TRUNCATED_IMAGE),
        ("something nobody has seen", OTHER),
        (None, OTHER),
    ],
)
def test_classify_error(message, cls):
    assert classify_error(message) == cls


def test_tagged_refuses_unknown_class():
    with pytest.raises(ValueError):
        tagged("nonsense", "x")


@pytest.mark.parametrize("fmt, magic", [("jpg", "jpeg"), ("png", "png"), ("webp", "webp")])
def test_header_size_and_completeness_of_real_images(fmt, magic):
    data = render_image("x", fmt, 123, 45)
    assert sniff_format(data) == magic
    assert header_size(data) == (123, 45)
    assert not is_truncated(data)
    assert check_image_bytes(data, 10_000) is None
    assert classify_error(check_image_bytes(data[: len(data) // 2], 1e9)) == TRUNCATED_IMAGE


def test_header_size_of_a_progressive_jpeg_and_gif():
    img = Image.new("RGB", (300, 20), (1, 2, 3))
    buf = io.BytesIO()
    img.save(buf, "JPEG", progressive=True)
    assert header_size(buf.getvalue()) == (300, 20)
    assert check_image_bytes(buf.getvalue(), 1e9) is None
    buf = io.BytesIO()
    img.save(buf, "GIF")
    assert header_size(buf.getvalue()) == (300, 20)


def test_decompression_bomb_is_refused_before_decoding():
    bomb = decompression_bomb_png(30_000)
    assert len(bomb) < 200
    assert header_size(bomb) == (30_000, 30_000)
    msg = check_image_bytes(bomb, 178_956_970)
    assert classify_error(msg) == TOO_LARGE and "30000x30000" in msg
    # the same header under a generous limit is allowed through to the decoder
    assert check_image_bytes(bomb, 1e10) is None


def test_text_and_empty_bodies():
    assert classify_error(check_image_bytes(b"", 1e9)) == EMPTY_BODY
    assert classify_error(check_image_bytes(b"  <!DOCTYPE html><html>", 1e9)) == NOT_AN_IMAGE
    assert classify_error(check_image_bytes(b'{"error": "gone"}', 1e9)) == NOT_AN_IMAGE
    # unknown binary: its pixel size cannot be read, so it is never decoded
    assert classify_error(check_image_bytes(bytes(range(256)), 1e9)) == INVALID_IMAGE


def test_png_missing_iend_is_truncated():
    ihdr = struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    assert is_truncated(b"\x89PNG\r\n\x1a\n" + chunk)
