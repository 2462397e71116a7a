"""Turn img2dataset's free-text error messages into a small fixed set of classes.

img2dataset keeps ``str(exception)`` in its ``error_message`` column. Reports and
reject reasons need a short vocabulary instead (``timeout``, ``http_4xx`` ...),
so statistics are comparable across runs and a reject reason is one of a few
values. zhclip's own checks (fetch guard, image header checks) prefix their
messages with the class and a colon, so those are read back exactly; messages
from urllib, socket and OpenCV are matched by the phrases they are known to use.
"""

from __future__ import annotations

import re

# Download-time classes (status failed_to_download).
TIMEOUT = "timeout"
HTTP_3XX = "http_3xx"
HTTP_4XX = "http_4xx"
HTTP_5XX = "http_5xx"
REDIRECT_LOOP = "redirect_loop"
DNS = "dns"
CONNECTION = "connection"
TLS = "tls"
DISALLOWED_BY_HEADER = "disallowed_by_header"
PRIVATE_ADDRESS = "private_address"
SCHEME_NOT_ALLOWED = "scheme_not_allowed"
INVALID_URL = "invalid_url"
RESPONSE_TOO_LARGE = "response_too_large"
HASH_MISMATCH = "hash_mismatch"
FILE_NOT_FOUND = "file_not_found"
# Content classes (usually status failed_to_resize).
EMPTY_BODY = "empty_body"
NOT_AN_IMAGE = "not_an_image"
TRUNCATED_IMAGE = "truncated_image"
INVALID_IMAGE = "invalid_image"
TOO_LARGE = "too_large"
TOO_SMALL = "too_small"
BAD_ASPECT_RATIO = "bad_aspect_ratio"
OTHER = "other"

KNOWN_CLASSES = frozenset(
    {
        TIMEOUT, HTTP_3XX, HTTP_4XX, HTTP_5XX, REDIRECT_LOOP, DNS, CONNECTION, TLS,
        DISALLOWED_BY_HEADER, PRIVATE_ADDRESS, SCHEME_NOT_ALLOWED, INVALID_URL,
        RESPONSE_TOO_LARGE, HASH_MISMATCH, FILE_NOT_FOUND, EMPTY_BODY, NOT_AN_IMAGE,
        TRUNCATED_IMAGE, INVALID_IMAGE, TOO_LARGE, TOO_SMALL, BAD_ASPECT_RATIO, OTHER,
    }
)

_PREFIX_RE = re.compile(r"^(?:<urlopen error )?([a-z_0-9]+): ")
_HTTP_RE = re.compile(r"HTTP Error (\d)\d\d")

# (class, lower-case phrases). Order matters: the first match wins. These are
# read before the HTTP status code, which urllib also puts in redirect errors.
_BEFORE_HTTP: list[tuple[str, tuple[str, ...]]] = [
    (REDIRECT_LOOP, ("infinite loop", "redirect error", "too many redirects")),
    (SCHEME_NOT_ALLOWED, ("redirection to url",)),
]
_PHRASES: list[tuple[str, tuple[str, ...]]] = [
    (DISALLOWED_BY_HEADER, ("x-robots-tag",)),
    (TIMEOUT, ("timed out", "timeout")),
    (DNS, (
        "name or service not known", "nodename nor servname", "temporary failure in name",
        "no address associated", "getaddrinfo failed", "name resolution",
    )),
    (TLS, ("ssl", "certificate")),
    (FILE_NOT_FOUND, ("no such file or directory", "is a directory")),
    (CONNECTION, (
        "connection refused", "connection reset", "connection aborted", "remote end closed",
        "remotedisconnected", "incompleteread", "network is unreachable", "no route to host",
        "broken pipe", "errno 111", "errno 104", "bad status line", "badstatusline",
    )),
    (INVALID_URL, (
        "unknown url type", "no host given", "url can't contain", "nonnumeric port",
        "invalid url", "nonetype", "invalid ipv6 url",
    )),
    (HASH_MISMATCH, ("hash mismatch",)),
    (TOO_LARGE, ("area too large", "decompression bomb")),
    (TOO_SMALL, ("image too small",)),
    (BAD_ASPECT_RATIO, ("aspect ratio too large",)),
    (EMPTY_BODY, ("!buf.empty()",)),
    (INVALID_IMAGE, ("decoding error", "cannot identify image", "imdecode", "opencv")),
]


def classify_error(message: str | None) -> str:
    """Class of one ``error_message``; ``other`` for a message no rule knows."""
    if not message:
        return OTHER
    text = str(message)
    m = _PREFIX_RE.match(text)
    if m and m.group(1) in KNOWN_CLASSES:
        return m.group(1)
    lower = text.lower()
    for cls, phrases in _BEFORE_HTTP:
        if any(p in lower for p in phrases):
            return cls
    m = _HTTP_RE.search(text)
    if m:
        return {"3": HTTP_3XX, "4": HTTP_4XX, "5": HTTP_5XX}.get(m.group(1), OTHER)
    for cls, phrases in _PHRASES:
        if any(p in lower for p in phrases):
            return cls
    return OTHER


def tagged(cls: str, detail: str) -> str:
    """An error message that :func:`classify_error` reads back as ``cls``."""
    if cls not in KNOWN_CLASSES:
        raise ValueError(f"unknown download error class {cls!r}")
    return f"{cls}: {detail}"
