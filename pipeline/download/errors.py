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

from zhclip.pipeline.core.reasons import (
    BAD_ASPECT_RATIO,
    CONNECTION,
    DISALLOWED_BY_HEADER,
    DNS,
    EMPTY_BODY,
    FILE_NOT_FOUND,
    HASH_MISMATCH,
    HTTP_3XX,
    HTTP_4XX,
    HTTP_5XX,
    INVALID_IMAGE,
    INVALID_URL,
    KNOWN_CLASSES,
    OTHER,
    REDIRECT_LOOP,
    SCHEME_NOT_ALLOWED,
    TIMEOUT,
    TLS,
    TOO_LARGE,
    TOO_SMALL,
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
