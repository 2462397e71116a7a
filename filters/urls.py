"""URL checks and the URL dedup key, vectorised over Arrow.

Stage 1 cannot resolve DNS for 200M URLs, so it rejects what is visible in the
URL itself: a scheme outside the allowlist, a malformed host, and literal
loopback / private / link-local / multicast / reserved addresses (including
decimal and hex IPv4 spellings that socket libraries accept). The download
stage's guard re-checks every connection after DNS and redirects.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import unicodedata
from collections.abc import Sequence
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc
from zhclip.filters.addresses import is_blocked_address, parse_ip
from zhclip.filters.addresses import parse_networks as _parse_networks

_URL_RE2 = (
    r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://"
    r"(?P<userinfo>[^/?#@\s]*@)?"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^/?#:@\s\[\]]*)"
    r"(?P<port>:[0-9]*)?"
    r"(?P<rest>[/?#][^\s]*)?$"
)
_HOST_OK_RE2 = r"^[\p{L}\p{N}_](?:[\p{L}\p{N}_\-]{0,62})(?:\.[\p{L}\p{N}_](?:[\p{L}\p{N}_\-]{0,62}))*\.?$"
# Hosts made only of digits, dots and hex prefixes may be IPv4 in some spelling.
_NUMERIC_HOST_RE2 = r"^(?:0[xX][0-9A-Fa-f]*|[0-9]+)(?:\.(?:0[xX][0-9A-Fa-f]*|[0-9]+))*\.?$"
_LOCALHOST_RE2 = r"^(?:localhost|.*\.localhost)\.?$"


def idna_host(host: str) -> str | None:
    """The ASCII (IDNA) form of a host as it goes into DNS and the Host header; None if
    the host has no valid one.

    The host is NFKC-folded first, as browsers do, so fullwidth letters, digits
    and dots become their ASCII selves before anything else looks at them (a
    fullwidth ``１２７．０．０．１`` is 127.0.0.1). Bracketed IPv6 literals pass through.
    """
    folded = unicodedata.normalize("NFKC", host).lower()
    if folded.startswith("[") or folded.isascii():
        ascii_host = folded
    else:
        try:
            ascii_host = folded.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    if not ascii_host.startswith("[") and not re.fullmatch(_ASCII_HOST_RE, ascii_host):
        return None
    return ascii_host


def splits_cleanly(url: str) -> bool:
    """True if ``urllib.parse`` reads the URL's host and port without an error, and a
    bracketed host is an IPv6 address (RFC 3986 brackets only IPv6)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
        host = parts.hostname
    except ValueError:
        return False
    if "[" in parts.netloc:
        try:
            ipaddress.IPv6Address((host or "").split("%", 1)[0])
        except ValueError:
            return False
    return True


_ASCII_HOST_RE = r"(?=.{1,253}$)[a-z0-9_](?:[a-z0-9_\-]{0,62})(?:\.[a-z0-9_](?:[a-z0-9_\-]{0,62}))*\.?"


def parse_networks(allow_networks: Sequence[str]) -> tuple:
    """Parse ``allow_networks``; a bad entry raises a ValueError naming it."""
    return _parse_networks(tuple(allow_networks))


def literal_address(host: str) -> ipaddress._BaseAddress | None:
    """The IP a host string denotes by itself (no DNS), in any spelling, else None."""
    ip = parse_ip(host)
    if ip is not None:
        return ip
    h = host.rstrip(".")
    try:  # 2130706433, 0x7f.1, 127.1 ... as inet_aton reads them
        return ipaddress.IPv4Address(socket.inet_aton(h))
    except (OSError, ValueError):
        return None


# The common case, checked with one DFA pass (no submatch extraction, which
# costs ~10x more in RE2): a network scheme, a lowercase-or-not ASCII host
# whose last label starts with a letter (so never an IP literal), an optional
# port, and a path without whitespace. Only the rest takes the full parse.
def _fast_url_re(schemes: Sequence[str]) -> str | None:
    net = sorted({re.escape(s.lower()) for s in schemes if s.lower() != "file"})
    if not net:
        return None
    return (
        rf"^(?:{'|'.join(net)})://[a-z0-9_][a-z0-9_\-]*(?:\.[a-z0-9_][a-z0-9_\-]*)*\.[a-z][a-z0-9\-]*\.?"
        rf"(?::{_PORT_RE})?(?:[/?#][^\s]*)?$"
    )


# 0-65535 (with leading zeros, as urllib reads them); a larger port takes the full parse.
_PORT_RE = r"(?:0*(?:[0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))"

_FAST_KEY_RE = r"^[a-z][a-z0-9+.\-]*://[a-z0-9_\-]+(?:\.[a-z0-9_\-]+)*/[^#\s]*$"


def _as_string_array(urls: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(urls, pa.ChunkedArray):
        urls = urls.combine_chunks()
    if urls.type != pa.string():
        urls = urls.cast(pa.string())
    return urls


def url_reasons(
    urls: pa.Array | pa.ChunkedArray,
    schemes: Sequence[str] = ("http", "https"),
    allow_networks: Sequence[str] = (),
) -> pa.Array:
    """Reject reason per URL (``invalid_url`` / ``private_address``), null to keep."""
    urls = _as_string_array(urls)
    parse_networks(allow_networks)
    fast_re = _fast_url_re(schemes)
    if fast_re is None or len(urls) == 0:
        return _url_reasons_full(urls, schemes, allow_networks)
    fast = pc.and_(
        pc.fill_null(pc.match_substring_regex(urls, fast_re, ignore_case=True), False),
        pc.invert(pc.fill_null(pc.match_substring(urls, "localhost", ignore_case=True), False)),
    )
    slow_idx = pc.indices_nonzero(pc.invert(fast))
    if len(slow_idx) == 0:
        return pa.nulls(len(urls), pa.string())
    slow = _url_reasons_full(urls.take(slow_idx), schemes, allow_networks)
    out: list[str | None] = [None] * len(urls)
    for i, r in zip(slow_idx.to_pylist(), slow.to_pylist(), strict=True):
        out[i] = r
    return pa.array(out, pa.string())


def _url_reasons_full(
    urls: pa.Array, schemes: Sequence[str], allow_networks: Sequence[str]
) -> pa.Array:
    from zhclip.pipeline.core.reasons import REASON_INVALID_URL, REASON_PRIVATE_ADDRESS

    parse_networks(allow_networks)  # a bad entry fails here, naming itself
    allowed_schemes = pa.array([s.lower() for s in schemes], pa.string())
    parts = pc.extract_regex(urls, _URL_RE2)
    matched = pc.is_valid(parts)
    scheme = pc.utf8_lower(pc.struct_field(parts, "scheme"))
    # NFKC first: fullwidth digits and dots must not hide a literal address.
    host = pc.utf8_lower(pc.utf8_normalize(pc.struct_field(parts, "host"), "NFKC"))
    is_file = pc.equal(scheme, "file")
    scheme_ok = pc.is_in(scheme, value_set=allowed_schemes)
    host_nonempty = pc.greater(pc.utf8_length(host), 0)
    host_shape_ok = pc.or_(
        pc.match_substring_regex(host, _HOST_OK_RE2),
        pc.starts_with(host, "["),
    )
    # file:// URLs have no network host; an empty host or localhost is fine.
    file_ok = pc.and_(is_file, pc.or_(pc.invert(host_nonempty), pc.equal(host, "localhost")))
    net_ok = pc.and_(pc.invert(is_file), pc.and_(host_nonempty, host_shape_ok))
    valid = pc.fill_null(pc.and_(matched, pc.and_(scheme_ok, pc.or_(file_ok, net_ok))), False)

    reasons: list[str | None] = [None] * len(urls)
    invalid_idx = pc.indices_nonzero(pc.invert(valid)).to_pylist()
    for i in invalid_idx:
        reasons[i] = REASON_INVALID_URL
    # What the downloader's URL parser refuses (a bracketed IPv4, userinfo that
    # NFKC-folds into a delimiter, a port out of range) must not pass stage 1.
    for i in pc.indices_nonzero(valid).to_pylist():
        if not splits_cleanly(urls[i].as_py()):
            reasons[i] = REASON_INVALID_URL
    # International names must have an IDNA form, or no request can name them.
    non_ascii = pc.fill_null(pc.and_(valid, pc.invert(pc.string_is_ascii(host))), False)
    for i, h in zip(pc.indices_nonzero(non_ascii).to_pylist(),
                    pc.filter(host, non_ascii).to_pylist(), strict=True):
        if idna_host(h) is None:
            reasons[i] = REASON_INVALID_URL
    # Hosts that may be addresses: bracketed, numeric-looking, or localhost names.
    maybe_ip = pc.fill_null(
        pc.and_(
            pc.and_(valid, pc.invert(is_file)),
            pc.or_(
                pc.or_(pc.starts_with(host, "["), pc.match_substring_regex(host, _NUMERIC_HOST_RE2)),
                pc.or_(
                    pc.match_substring_regex(host, _LOCALHOST_RE2),
                    pc.match_substring(host, ":"),
                ),
            ),
        ),
        False,
    )
    idx = pc.indices_nonzero(maybe_ip).to_pylist()
    if idx:
        hosts = pc.take(host, pa.array(idx)).to_pylist()
        loopback = ipaddress.ip_address("127.0.0.1")
        for i, h in zip(idx, hosts, strict=True):
            if re.match(r"^(?:localhost|.*\.localhost)\.?$", h):
                ip = loopback
            else:
                ip = literal_address(h)
            if ip is None:
                if h.startswith("[") or re.fullmatch(r"[0-9.]+", h):
                    reasons[i] = REASON_INVALID_URL
                continue
            if is_blocked_address(str(ip), allow_networks):
                reasons[i] = REASON_PRIVATE_ADDRESS
    return pa.array(reasons, pa.string())


def url_reason(
    url: str | None, schemes: Sequence[str] = ("http", "https"), allow_networks: Sequence[str] = ()
) -> str | None:
    """Per-string version of :func:`url_reasons`."""
    return url_reasons(pa.array([url], pa.string()), schemes, allow_networks)[0].as_py()


def url_dedup_keys(urls: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Normalised URL used to find the same image under two spellings.

    Lowercases scheme and host, drops userinfo, a default port and the
    fragment; path and query stay as they are (they are case-sensitive on most
    servers). Unparseable URLs keep their raw text, so they never merge with
    a different URL.
    """
    urls = _as_string_array(urls)
    # Most URLs are already in normal form (lowercase host, a path, no port,
    # no fragment): they are their own key, and only the rest is parsed.
    fast = pc.fill_null(pc.match_substring_regex(urls, _FAST_KEY_RE), False)
    slow_mask = pc.invert(fast)
    if not pc.any(slow_mask).as_py():
        return urls
    slow_keys = _url_dedup_keys_full(urls.filter(slow_mask))
    return pc.replace_with_mask(urls, slow_mask, slow_keys)


def _url_dedup_keys_full(urls: pa.Array) -> pa.Array:
    parts = pc.extract_regex(urls, _URL_RE2)
    scheme = pc.utf8_lower(pc.struct_field(parts, "scheme"))
    host = pc.utf8_rtrim(pc.utf8_lower(pc.struct_field(parts, "host")), ".")
    port = pc.fill_null(pc.struct_field(parts, "port"), "")
    default_port = pc.if_else(
        pc.equal(scheme, "http"), ":80", pc.if_else(pc.equal(scheme, "https"), ":443", "")
    )
    port = pc.if_else(pc.or_(pc.equal(port, default_port), pc.equal(port, ":")), "", port)
    rest = pc.fill_null(pc.struct_field(parts, "rest"), "")
    rest = pc.replace_substring_regex(rest, r"#.*$", "")
    rest = pc.if_else(pc.equal(rest, ""), "/", rest)
    key = pc.binary_join_element_wise(scheme, "://", host, port, rest, "")
    return pc.if_else(pc.is_valid(parts), key, urls)


def url_dedup_key(url: str) -> str:
    return url_dedup_keys(pa.array([url], pa.string()))[0].as_py()
