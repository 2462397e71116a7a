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
import threading
import time
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


# Resolver answers that will not change on asking again soon: the name does not exist.
DEFINITE_LOOKUP_FAILURES = frozenset(
    code for code in (getattr(socket, "EAI_NONAME", None), getattr(socket, "EAI_NODATA", None))
    if code is not None
)


def _definite(err: OSError) -> bool:
    return isinstance(err, socket.gaierror) and err.errno in DEFINITE_LOOKUP_FAILURES


class HostAnswers:
    """Name answers shared by one shard's fetches: each host is resolved once, not per URL.

    A shard names the same hosts over and over (and every redirect opens a new
    connection); asking the resolver each time multiplies DNS load by the URLs per
    host. Only the lookup is shared: the guard still checks every address of an
    answer against the SSRF rules on every connection, and connects to the
    address it checked. Failed lookups are remembered too (a dead domain with a
    thousand URLs is asked once), but only a definite "no such name": a temporary
    resolver failure (EAI_AGAIN, a timeout) is asked again next time, or one blip would
    fail every URL of that host for ``max_age``. Entries expire after ``max_age`` seconds, and
    the table is emptied when it reaches ``max_entries``, so it stays small
    however many hosts a long run meets.
    """

    def __init__(self, max_entries: int = 4096, max_age: float = 300.0):
        self.max_entries, self.max_age = max_entries, max_age
        self._lock = threading.Lock()
        self._answers: dict[tuple[str, int], tuple[float, list | OSError]] = {}
        self._asking: dict[tuple[str, int], threading.Lock] = {}  # one lookup per name at a time
        self.lookups = 0  # questions sent to the resolver
        self.connections = 0  # connections the guard was asked to open

    def addresses(self, host: str, port: int) -> list:
        """``resolve(host, port, 0, SOCK_STREAM)``, from the table when it is fresh there.

        Threads asking for the same name at once wait for one lookup (a shard's first
        URLs of a host arrive together), so a name is asked once, not once per thread.
        """
        with self._lock:
            self.connections += 1
            found = self._fresh(host, port)
            if found is None:
                asking = self._asking.setdefault((host, port), threading.Lock())
        if found is not None:
            return _answer_or_raise(found)
        with asking:
            with self._lock:
                found = self._fresh(host, port)
            if found is None:
                found = self._lookup(host, port)
        with self._lock:
            self._asking.pop((host, port), None)
        return _answer_or_raise(found)

    def _fresh(self, host: str, port: int) -> list | OSError | None:
        found = self._answers.get((host, port))
        return None if found is None or time.monotonic() - found[0] > self.max_age else found[1]

    def _lookup(self, host: str, port: int) -> list | OSError:
        now = time.monotonic()
        try:
            answer: list | OSError = resolve(host, port, 0, socket.SOCK_STREAM)
        except OSError as err:
            answer = err
        with self._lock:
            self.lookups += 1
            if not isinstance(answer, OSError) or _definite(answer):
                if len(self._answers) >= self.max_entries:
                    self._answers.clear()
                self._answers[(host, port)] = (now, answer)
        return answer


def _answer_or_raise(answer: list | OSError) -> list:
    if isinstance(answer, OSError):
        raise answer
    return answer


def guarded_create_connection(
    policy: FetchPolicy, answers: HostAnswers | None = None
) -> Callable[..., socket.socket]:
    """A ``socket.create_connection`` replacement that enforces ``policy``.

    Inside an image's deadline (see :func:`make_fetch_function`) the connect
    timeout is cut to the time left, and the socket is handed to the watchdog.
    With ``answers``, names are resolved through that shared table.
    """

    def create(address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None, **_):
        host, port = address
        timeout, deadline = timeout_within_deadline(timeout)
        if answers is not None:
            infos = answers.addresses(host, port)
        else:
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
    def __init__(self, *args, policy: FetchPolicy, answers: HostAnswers | None, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = guarded_create_connection(policy, answers)


class _GuardedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args, policy: FetchPolicy, answers: HostAnswers | None, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = guarded_create_connection(policy, answers)


class _GuardedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, policy: FetchPolicy, answers: HostAnswers | None):
        super().__init__()
        self._connection = functools.partial(_GuardedHTTPConnection, policy=policy, answers=answers)

    def http_open(self, req):
        return self.do_open(self._connection, req)


class _GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, policy: FetchPolicy, answers: HostAnswers | None):
        super().__init__()
        self._connection = functools.partial(
            _GuardedHTTPSConnection, policy=policy, answers=answers
        )

    def https_open(self, req):
        return self.do_open(self._connection, req, context=self._context)


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


def build_opener(
    policy: FetchPolicy, answers: HostAnswers | None = None
) -> urllib.request.OpenerDirector:
    """An opener with only the handlers the policy allows, and no proxy.

    Proxies are left out on purpose: through a proxy the guard would check the
    proxy's address, not the one the URL names.
    """
    opener = urllib.request.OpenerDirector()
    handlers: list = [
        urllib.request.UnknownHandler(),
        _GuardedHTTPHandler(policy, answers),
        _GuardedHTTPSHandler(policy, answers),
        urllib.request.HTTPDefaultErrorHandler(),
        _SchemeCheckingRedirectHandler(policy),
        urllib.request.HTTPErrorProcessor(),
    ]
    if "file" in policy.schemes:
        handlers.append(urllib.request.FileHandler())
    for handler in handlers:
        opener.add_handler(handler)
    return opener
