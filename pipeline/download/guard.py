"""Connections the guard allows: resolve, refuse non-public addresses, connect to the checked one.

Every TCP connection of the guarded fetch is made by
:func:`guarded_create_connection`, which resolves the host itself, refuses
addresses :func:`filters.addresses.is_blocked_address` blocks, and connects to
the very address it checked (so a second DNS answer cannot swap in another
one). Redirects open new connections through the same code, so they are
checked too. :func:`build_opener` wires it into urllib with no proxy.
"""

from __future__ import annotations

import functools
import http.client
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from urllib.parse import urlsplit

from zhclip.filters.addresses import is_blocked_address
from zhclip.pipeline.core.reasons import PRIVATE_ADDRESS, SCHEME_NOT_ALLOWED, tagged
from zhclip.pipeline.download.deadline import timeout_within_deadline, watchdog
from zhclip.pipeline.download.policy import FetchPolicy


class PrivateAddressError(OSError):
    """A connection the guard refused; the message starts with ``private_address:``."""


def resolve(host, port, family=0, type=0, proto=0, flags=0):  # noqa: A002 - socket's names
    """The resolver of the guarded fetch (``socket.getaddrinfo``); a seam for tests that
    map a name to a loopback address, and the only name lookup the fetch makes."""
    return socket.getaddrinfo(host, port, family, type, proto, flags)


def guarded_create_connection(policy: FetchPolicy) -> Callable[..., socket.socket]:
    """A ``socket.create_connection`` replacement that enforces ``policy``.

    Inside an image's deadline (see :func:`make_fetch_function`) the connect
    timeout is cut to the time left, and the socket is handed to the watchdog.
    """

    def create(address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None, **_):
        host, port = address
        timeout, deadline = timeout_within_deadline(timeout)
        infos = resolve(host, port, 0, socket.SOCK_STREAM)
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
                if deadline is not None:
                    watchdog.watch(sock, deadline)
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
