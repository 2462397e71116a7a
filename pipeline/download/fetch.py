"""The guarded fetch path: how stage 2 opens a URL.

img2dataset fetches with a bare ``urllib.request.urlopen``, which will happily
connect to 127.0.0.1, to the private network, or to the cloud metadata service
(169.254.169.254) if a URL, its DNS name or a redirect points there. Here every
TCP connection goes through :mod:`download.guard`, which checks the address it
connects to; :mod:`download.deadline` bounds the whole image's time;
:mod:`download.request` forms the request. Schemes other than
``filters.urls.schemes`` are refused before anything is opened; ``file://``
works only when listed.

:func:`guarded_fetch_installed` puts our fetch function in place of
img2dataset's module-level ``download_image`` while a shard runs, so the rest
of img2dataset (threads, retries, resizing, writing) is used unchanged.
"""

from __future__ import annotations

import io
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from zhclip.pipeline.core.reasons import (
    DISALLOWED_BY_HEADER,
    RESPONSE_TOO_LARGE,
    SCHEME_NOT_ALLOWED,
    tagged,
)
from zhclip.pipeline.download.deadline import (  # noqa: F401 - re-exported names
    Deadline,
    DeadlinePassed,
    deadline_message,
    deadline_scope,
    read_capped,
)
from zhclip.pipeline.download.guard import (  # noqa: F401 - re-exported names
    HostAnswers,
    PrivateAddressError,
    build_opener,
    guarded_create_connection,
    resolve,
)
from zhclip.pipeline.download.host_slots import HostSlots
from zhclip.pipeline.download.policy import (  # noqa: F401 - re-exported names
    DEADLINE_TIMEOUTS,
    MAX_RESPONSE_BYTES,
    FetchFunction,
    FetchPolicy,
    FetchResult,
)
from zhclip.pipeline.download.request import (  # noqa: F401 - re-exported names
    request_url,
    robots_tag_disallows,
    user_agent,
)


def _fetch(
    opener,
    policy: FetchPolicy,
    url,
    timeout: float,
    deadline: Deadline,
    token: str | None,
    directives,
) -> tuple[io.BytesIO | None, str | None]:
    target, problem = request_url(url, policy.schemes)
    if problem is not None:
        return None, problem
    if target.startswith("file:") and not policy.file_allowed(target):
        return None, tagged(
            SCHEME_NOT_ALLOWED,
            f"{target!r} is outside every source's image_root "
            f"{list(policy.file_roots or ())}: file:// reads only there",
        )
    try:
        request = urllib.request.Request(target, headers={"User-Agent": user_agent(token)})
        with opener.open(request, timeout=timeout) as response:
            if robots_tag_disallows(response.headers, token, directives):
                return None, tagged(DISALLOWED_BY_HEADER, "X-Robots-Tag opts this image out of use")
            data = read_capped(response, policy.max_response_bytes, deadline)
    except urllib.error.URLError as err:
        if deadline.expired:
            return None, deadline_message(deadline.seconds)
        reason = err.reason if not isinstance(err, urllib.error.HTTPError) else None
        return None, str(reason) if isinstance(reason, str | OSError) else str(err)
    if deadline.expired:
        # The watchdog cut the connection: whatever was read is not the whole image.
        return None, deadline_message(deadline.seconds)
    if data is None:
        return None, tagged(
            RESPONSE_TOO_LARGE, f"response is over {policy.max_response_bytes} bytes"
        )
    return data, None


class FetchClock:
    """The longest single fetch, against its deadline: proof that no URL held a thread
    past ``download.deadline`` (the watchdog's job), kept per installed fetch function."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.longest_s = 0.0
        self.deadline_s = 0.0

    def record(self, seconds: float, deadline_s: float) -> None:
        with self._lock:
            if seconds > self.longest_s:
                self.longest_s = seconds
            self.deadline_s = max(self.deadline_s, deadline_s)


def make_fetch_function(policy: FetchPolicy) -> FetchFunction:
    """A drop-in for ``img2dataset.downloader.download_image`` that obeys ``policy``.

    Its threads share one :class:`guard.HostAnswers` (``.answers``): each host is
    resolved once for the shard, every address still checked per connection.
    ``.clock`` (:class:`FetchClock`) keeps the longest fetch; ``.slots``
    (:class:`host_slots.HostSlots`) keeps ``policy.max_per_host``.
    """
    answers = HostAnswers()
    opener = build_opener(policy, answers)
    clock = FetchClock()
    slots = HostSlots(policy.max_per_host)

    def download_image(row, timeout, user_agent_token, disallowed_header_directives) -> FetchResult:
        started = time.monotonic()
        seconds = policy.deadline_seconds(timeout)
        try:
            return _fetch_row(row, timeout, seconds, user_agent_token, disallowed_header_directives)
        finally:
            clock.record(time.monotonic() - started, seconds)

    def _fetch_row(row, timeout, seconds, user_agent_token, disallowed_header_directives):
        key, url = row
        try:
            with deadline_scope(seconds) as deadline, slots.slot(url, seconds) as free:
                if not free:
                    return key, None, deadline_message(seconds) + (
                        f", waiting for one of the host's {policy.max_per_host} "
                        "download.max_per_host slots")
                return key, *_fetch(
                    opener,
                    policy,
                    url,
                    timeout,
                    deadline,
                    user_agent_token,
                    disallowed_header_directives,
                )
        except Exception as err:  # noqa: BLE001 - every failure becomes a recorded reason
            if deadline.expired or isinstance(err, DeadlinePassed):
                return key, None, deadline_message(seconds)
            return key, None, f"{type(err).__name__}: {err}"

    download_image.answers = answers
    download_image.clock = clock
    download_image.slots = slots
    return download_image


# --- putting the fetch function into img2dataset -----------------------------

_install = threading.Condition()
_installed: dict = {"policy": None, "count": 0, "original": None}


@contextmanager
def guarded_fetch_installed(policy: FetchPolicy) -> Iterator[FetchFunction]:
    """While inside, img2dataset's Downloader fetches through ``policy``; yields the
    installed function (its ``.answers`` count lookups and connections, its ``.clock``
    keeps the longest fetch).

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
        installed = i2d_downloader.download_image
    try:
        yield installed
    finally:
        with _install:
            _installed["count"] -= 1
            if _installed["count"] == 0:
                i2d_downloader.download_image = _installed["original"]
                _installed["policy"] = None
                _install.notify_all()
