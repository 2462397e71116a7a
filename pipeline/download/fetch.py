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
import heapq
import http.client
import io
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

from zhclip.filters.addresses import is_blocked_address, parse_networks
from zhclip.filters.urls import idna_host
from zhclip.pipeline.core.reasons import (
    DISALLOWED_BY_HEADER,
    INVALID_URL,
    PRIVATE_ADDRESS,
    RESPONSE_TOO_LARGE,
    SCHEME_NOT_ALLOWED,
    TIMEOUT,
    tagged,
)

# A response bigger than this is not an image worth keeping; reading it whole
# would let one URL exhaust a worker's memory.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
# Without download.deadline, an image gets this many per-read timeouts in total.
DEADLINE_TIMEOUTS = 3.0

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
    deadline: float | None = None  # seconds per image, all reads included; None: 3 x timeout
    # Folders file:// URLs may be read from (after symlinks are resolved); None: anywhere.
    # from_config sets the sources' image_root folders, so a listed "file" scheme cannot
    # read /etc/passwd or ~/.ssh whatever a URL shard says.
    file_roots: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        parse_networks(self.allow_networks)  # fail at start-up, not per URL

    @classmethod
    def from_config(cls, cfg) -> FetchPolicy:
        """Policy of a :class:`pipeline.config.Config` (its ``filters.urls``)."""
        urls = cfg.filters.urls
        return cls(
            schemes=tuple(s.lower() for s in urls.schemes),
            allow_networks=tuple(urls.allow_networks),
            deadline=getattr(cfg.download, "deadline", None),
            file_roots=tuple(os.path.realpath(s.image_root) for s in cfg.sources if s.image_root),
        )

    def file_allowed(self, url: str) -> bool:
        """Whether a file:// URL names a file under one of ``file_roots``."""
        if self.file_roots is None:
            return True
        path = os.path.realpath(urllib.request.url2pathname(urlsplit(url).path))
        return any(path == root or path.startswith(root.rstrip(os.sep) + os.sep) for root in self.file_roots)

    def deadline_seconds(self, timeout: float) -> float:
        """The whole-image time limit for a per-read ``timeout``."""
        return self.deadline if self.deadline is not None else DEADLINE_TIMEOUTS * timeout


# --- the total deadline --------------------------------------------------------------
#
# A socket timeout bounds each read, not the response: a host that sends one
# byte per second never trips it. Every connection an image's fetch opens is
# registered with one watchdog thread, which shuts the socket down when the
# image's deadline passes; the blocked read then returns at once, whether it
# waits for a header line or for the body, in plain HTTP or TLS.


class _Watchdog:
    """One thread that shuts down sockets whose deadline has passed."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, socket.socket, _Deadline]] = []
        self._counter = 0
        self._thread: threading.Thread | None = None

    def watch(self, sock: socket.socket, deadline: _Deadline) -> None:
        with self._cond:
            self._counter += 1
            heapq.heappush(self._heap, (deadline.at, self._counter, sock, deadline))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="zhclip-deadline",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while True:
                while not self._heap:
                    self._cond.wait()
                at, _, sock, deadline = self._heap[0]
                wait = at - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                if deadline.active:
                    deadline.expired = True
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass  # already closed: the fetch finished in time


_watchdog = _Watchdog()
_current = threading.local()


class _Deadline:
    """The time limit of one image's fetch; ``expired`` once the watchdog acted."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.expired = False
        self.active = True

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def passed(self) -> bool:
        return self.expired or self.remaining() <= 0


@contextmanager
def _deadline_scope(seconds: float) -> Iterator[_Deadline]:
    deadline = _Deadline(seconds)
    _current.deadline = deadline
    try:
        yield deadline
    finally:
        deadline.active = False
        _current.deadline = None


def _timeout_within_deadline(timeout):
    deadline: _Deadline | None = getattr(_current, "deadline", None)
    if deadline is None:
        return timeout, None
    left = max(0.001, deadline.remaining())
    if timeout is socket._GLOBAL_DEFAULT_TIMEOUT or timeout is None:
        return left, deadline
    return min(timeout, left), deadline


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
        timeout, deadline = _timeout_within_deadline(timeout)
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
                    _watchdog.watch(sock, deadline)
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


class DeadlinePassed(TimeoutError):
    """The image's total deadline passed while its response was being read."""


def read_capped(response, cap: int, deadline: _Deadline | None = None) -> io.BytesIO | None:
    """The whole body as a stream, or None once it is known to exceed ``cap`` bytes.

    The body is always read in pieces and the cap counts the bytes actually
    read: a Content-Length is only believed when it already says "too big",
    since a chunked body may carry a small one and then send gigabytes.
    Between pieces the deadline is checked, so a slow body cannot outlast it.
    Pieces go straight into one buffer (no list joined at the end), so a body
    costs its own size once, at most ``cap`` plus one piece per thread.
    """
    declared = response.headers.get("Content-Length")
    if declared is not None and declared.strip().isdigit() and int(declared) > cap:
        return None
    body = io.BytesIO()
    while True:
        if deadline is not None and deadline.passed():
            raise DeadlinePassed("deadline passed while reading the body")
        chunk = response.read(1 << 16)
        if not chunk:
            body.seek(0)
            return body
        if body.tell() + len(chunk) > cap:
            return None
        body.write(chunk)


def _deadline_message(seconds: float) -> str:
    return tagged(TIMEOUT, f"the image took longer than download.deadline ({seconds:g} s)")


def request_url(url: object, schemes: tuple[str, ...]) -> tuple[str | None, str | None]:
    """(URL to send, None) or (None, tagged reason): the one place a raw URL is parsed.

    The host goes out in its IDNA form (例子.测试 -> xn--fsqu00a.xn--0zwm56d),
    userinfo is dropped (a crawler sends no credentials, and ``user@`` is a
    classic way to disguise the real host), and non-ASCII in the path or query
    is percent-encoded, since HTTP request lines are ASCII.
    """
    if not isinstance(url, str) or not url.strip():
        return None, tagged(INVALID_URL, f"url is {url!r}")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
        host = parts.hostname
    except ValueError as err:
        return None, tagged(INVALID_URL, f"{url!r} does not parse: {err}")
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        return None, tagged(
            SCHEME_NOT_ALLOWED, f"scheme {scheme!r} is not in filters.urls.schemes {list(schemes)}"
        )
    if scheme == "file":
        return url, None
    if not host:
        return None, tagged(INVALID_URL, f"{url!r} has no host")
    bracketed = "[" in parts.netloc
    ascii_host = idna_host(f"[{host}]" if bracketed else host)
    if ascii_host is None:
        return None, tagged(INVALID_URL, f"host {host!r} of {url!r} has no valid IDNA form")
    netloc = ascii_host if port is None else f"{ascii_host}:{port}"
    safe = "/%:@!$&'()*+,;=-._~?"
    try:
        path, query = quote(parts.path, safe=safe), quote(parts.query, safe=safe)
    except UnicodeError as err:  # a lone surrogate has no UTF-8 form
        return None, tagged(INVALID_URL, f"{url!r} cannot be percent-encoded: {err}")
    return urlunsplit((scheme, netloc, path or "/", query, "")), None


def _fetch(opener, policy: FetchPolicy, url, timeout: float, deadline: _Deadline,
           token: str | None, directives) -> tuple[io.BytesIO | None, str | None]:
    target, problem = request_url(url, policy.schemes)
    if problem is not None:
        return None, problem
    if target.startswith("file:") and not policy.file_allowed(target):
        return None, tagged(SCHEME_NOT_ALLOWED, f"{target!r} is outside every source's image_root "
                            f"{list(policy.file_roots or ())}: file:// reads only there")
    try:
        request = urllib.request.Request(target, headers={"User-Agent": user_agent(token)})
        with opener.open(request, timeout=timeout) as response:
            if robots_tag_disallows(response.headers, token, directives):
                return None, tagged(DISALLOWED_BY_HEADER, "X-Robots-Tag opts this image out of use")
            data = read_capped(response, policy.max_response_bytes, deadline)
    except urllib.error.URLError as err:
        if deadline.expired:
            return None, _deadline_message(deadline.seconds)
        reason = err.reason if not isinstance(err, urllib.error.HTTPError) else None
        return None, str(reason) if isinstance(reason, str | OSError) else str(err)
    if deadline.expired:
        # The watchdog cut the connection: whatever was read is not the whole image.
        return None, _deadline_message(deadline.seconds)
    if data is None:
        return None, tagged(
            RESPONSE_TOO_LARGE, f"response is over {policy.max_response_bytes} bytes"
        )
    return data, None


def make_fetch_function(policy: FetchPolicy) -> FetchFunction:
    """A drop-in for ``img2dataset.downloader.download_image`` that obeys ``policy``."""
    opener = build_opener(policy)

    def download_image(row, timeout, user_agent_token, disallowed_header_directives) -> FetchResult:
        key, url = row
        seconds = policy.deadline_seconds(timeout)
        try:
            with _deadline_scope(seconds) as deadline:
                return key, *_fetch(opener, policy, url, timeout, deadline, user_agent_token,
                                    disallowed_header_directives)
        except Exception as err:  # noqa: BLE001 - every failure becomes a recorded reason
            if deadline.expired or isinstance(err, DeadlinePassed):
                return key, None, _deadline_message(seconds)
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
