"""The guarded fetch path: how stage 2 opens a URL.

img2dataset fetches with a bare ``urllib.request.urlopen``, which will happily
connect to 127.0.0.1, to the private network, or to the cloud metadata service
(169.254.169.254) if a URL, its DNS name or a redirect points there. Here every
TCP connection is made by :func:`guarded_create_connection`, which resolves the
host itself, refuses addresses :func:`filters.addresses.is_blocked_address`
blocks, and connects to the very address it checked (so a second DNS answer
cannot swap in another one). Redirects open new connections through the same
code, so they are checked too. Schemes other than ``filters.urls.schemes`` are
refused before anything is opened; ``file://`` works only when listed.

:func:`guarded_fetch_installed` puts our fetch function in place of
img2dataset's module-level ``download_image`` while a shard runs, so the rest
of img2dataset (threads, retries, resizing, writing) is used unchanged.
"""

from __future__ import annotations

import functools
import http.client
import io
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

from zhclip.filters.addresses import is_blocked_address, parse_networks
from zhclip.pipeline.core.reasons import (
    DISALLOWED_BY_HEADER,
    INVALID_URL,
    PRIVATE_ADDRESS,
    RESPONSE_TOO_LARGE,
    SCHEME_NOT_ALLOWED,
    tagged,
)

# A response bigger than this is not an image worth keeping; reading it whole
# would let one URL exhaust a worker's memory.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024

FetchResult = tuple[int, io.BytesIO | None, str | None]
FetchFunction = Callable[..., FetchResult]


class PrivateAddressError(OSError):
    """A connection the guard refused; the message starts with ``private_address:``."""


@dataclass(frozen=True)
class FetchPolicy:
    """What the fetch path may reach: URL schemes and networks exempt from the guard."""

    schemes: tuple[str, ...] = ("http", "https")
    allow_networks: tuple[str, ...] = ()
    max_response_bytes: int = MAX_RESPONSE_BYTES

    def __post_init__(self) -> None:
        parse_networks(self.allow_networks)  # fail at start-up, not per URL

    @classmethod
    def from_config(cls, cfg) -> FetchPolicy:
        """Policy of a :class:`pipeline.config.Config` (its ``filters.urls``)."""
        urls = cfg.filters.urls
        return cls(
            schemes=tuple(s.lower() for s in urls.schemes),
            allow_networks=tuple(urls.allow_networks),
        )


def guarded_create_connection(policy: FetchPolicy) -> Callable[..., socket.socket]:
    """A ``socket.create_connection`` replacement that enforces ``policy``."""

    def create(address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None, **_):
        host, port = address
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
        blocked: list[str] = []
        last_error: OSError | None = None
        for family, socktype, proto, _canon, sockaddr in infos:
            ip = sockaddr[0]
            if is_blocked_address(ip, policy.allow_networks):
                blocked.append(ip)
                continue
            sock = socket.socket(family, socktype, proto)
            try:
                if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
                    sock.settimeout(timeout)
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
                return sock
            except OSError as err:
                sock.close()
                last_error = err
        if last_error is not None:
            raise last_error
        addresses = ", ".join(sorted(set(blocked)))
        where = addresses if addresses == host else f"{host} ({addresses})"
        raise PrivateAddressError(
            tagged(
                PRIVATE_ADDRESS,
                f"{where} is a non-public address and not in filters.urls.allow_networks",
            )
        )

    return create


class _GuardedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args, policy: FetchPolicy, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = guarded_create_connection(policy)


class _GuardedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args, policy: FetchPolicy, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = guarded_create_connection(policy)


class _GuardedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, policy: FetchPolicy):
        super().__init__()
        self._policy = policy

    def http_open(self, req):
        return self.do_open(functools.partial(_GuardedHTTPConnection, policy=self._policy), req)


class _GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, policy: FetchPolicy):
        super().__init__()
        self._policy = policy

    def https_open(self, req):
        return self.do_open(
            functools.partial(_GuardedHTTPSConnection, policy=self._policy),
            req,
            context=self._context,
        )


class _SchemeCheckingRedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follows redirects only to schemes the policy allows (never http -> file)."""

    def __init__(self, policy: FetchPolicy):
        super().__init__()
        self._policy = policy

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        scheme = urlsplit(newurl).scheme.lower()
        if scheme not in self._policy.schemes or scheme == "file":
            raise urllib.error.URLError(
                tagged(SCHEME_NOT_ALLOWED, f"redirect to {newurl!r} uses scheme {scheme!r}")
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def build_opener(policy: FetchPolicy) -> urllib.request.OpenerDirector:
    """An opener with only the handlers the policy allows, and no proxy.

    Proxies are left out on purpose: through a proxy the guard would check the
    proxy's address, not the one the URL names.
    """
    opener = urllib.request.OpenerDirector()
    handlers: list = [
        urllib.request.UnknownHandler(),
        _GuardedHTTPHandler(policy),
        _GuardedHTTPSHandler(policy),
        urllib.request.HTTPDefaultErrorHandler(),
        _SchemeCheckingRedirectHandler(policy),
        urllib.request.HTTPErrorProcessor(),
    ]
    if "file" in policy.schemes:
        handlers.append(urllib.request.FileHandler())
    for handler in handlers:
        opener.add_handler(handler)
    return opener


def user_agent(token: str | None) -> str:
    """User-Agent naming the crawler's token, so sites can address it in X-Robots-Tag."""
    base = "Mozilla/5.0 (compatible; img2dataset"
    return f"{base}; {token})" if token else f"{base})"


def robots_tag_disallows(headers, token: str | None, directives: set[str] | None) -> bool:
    """True if an ``X-Robots-Tag`` header (for everyone or for ``token``) opts out."""
    if not directives:
        return False
    for value in headers.get_all("X-Robots-Tag", []) or []:
        agent, sep, rest = value.partition(":")
        target = agent.strip().lower() if sep else None
        listed = rest if sep else value
        if target is not None and " " in target:
            # "noindex, nofollow: x" is not an agent prefix; read the whole value.
            target, listed = None, value
        if target not in (None, token):
            continue
        if any(d.strip().lower() in directives for d in listed.split(",")):
            return True
    return False


def read_capped(response, cap: int) -> bytes | None:
    """The whole body, or None once it is known to exceed ``cap`` bytes.

    A declared Content-Length is read in one call; a body of unknown length is
    read in pieces, so a bogus endless response cannot fill memory and a huge
    read buffer is never allocated up front.
    """
    declared = response.headers.get("Content-Length")
    if declared is not None and declared.strip().isdigit():
        if int(declared) > cap:
            return None
        return response.read()
    parts, size = [], 0
    while True:
        chunk = response.read(1 << 16)
        if not chunk:
            return b"".join(parts)
        size += len(chunk)
        if size > cap:
            return None
        parts.append(chunk)


def make_fetch_function(policy: FetchPolicy) -> FetchFunction:
    """A drop-in for ``img2dataset.downloader.download_image`` that obeys ``policy``."""
    opener = build_opener(policy)

    def download_image(row, timeout, user_agent_token, disallowed_header_directives) -> FetchResult:
        key, url = row
        if not isinstance(url, str) or not url.strip():
            return key, None, tagged(INVALID_URL, f"url is {url!r}")
        scheme = urlsplit(url).scheme.lower()
        if scheme not in policy.schemes:
            return key, None, tagged(
                SCHEME_NOT_ALLOWED,
                f"scheme {scheme!r} is not in filters.urls.schemes {list(policy.schemes)}",
            )
        try:
            request = urllib.request.Request(url, headers={"User-Agent": user_agent(user_agent_token)})
            with opener.open(request, timeout=timeout) as response:
                if robots_tag_disallows(
                    response.headers, user_agent_token, disallowed_header_directives
                ):
                    return key, None, tagged(
                        DISALLOWED_BY_HEADER, "X-Robots-Tag opts this image out of use"
                    )
                data = read_capped(response, policy.max_response_bytes)
            if data is None:
                return key, None, tagged(
                    RESPONSE_TOO_LARGE, f"response is over {policy.max_response_bytes} bytes"
                )
            return key, io.BytesIO(data), None
        except urllib.error.URLError as err:
            reason = err.reason if not isinstance(err, urllib.error.HTTPError) else None
            return key, None, str(reason) if isinstance(reason, str | OSError) else str(err)
        except Exception as err:  # noqa: BLE001 - every failure becomes a recorded reason
            return key, None, f"{type(err).__name__}: {err}"

    return download_image


# --- putting the fetch function into img2dataset -----------------------------

_install = threading.Condition()
_installed: dict = {"policy": None, "count": 0, "original": None}


@contextmanager
def guarded_fetch_installed(policy: FetchPolicy) -> Iterator[None]:
    """While inside, img2dataset's Downloader fetches through ``policy``.

    img2dataset looks its fetch function up as a module global on every call,
    so the swap is process-wide. Shards of one job share the policy and may
    overlap; a caller with another policy waits until they are done, and the
    original function is put back when the last one leaves, so plain
    img2dataset in the same process (the benchmark) is unaffected afterwards.
    """
    from zhclip.pipeline.download.img2dataset_glue import img2dataset_module

    i2d_downloader = img2dataset_module("downloader")

    with _install:
        while _installed["count"] and _installed["policy"] != policy:
            _install.wait()
        if _installed["count"] == 0:
            _installed["original"] = i2d_downloader.download_image
            _installed["policy"] = policy
            i2d_downloader.download_image = make_fetch_function(policy)
        _installed["count"] += 1
    try:
        yield
    finally:
        with _install:
            _installed["count"] -= 1
            if _installed["count"] == 0:
                i2d_downloader.download_image = _installed["original"]
                _installed["policy"] = None
                _install.notify_all()
