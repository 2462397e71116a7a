"""Per-host politeness: at most ``download.max_per_host`` requests of a shard open to one host.

img2dataset's threads take URLs in order and open whatever they are given, so a
host that holds many of a shard's URLs (a CDN, an image board) sees as many
connections as there are threads, and a slow one keeps them all waiting on its
queue. With a limit, a thread over it waits for a slot, inside the image's own
deadline, and ends with a ``timeout`` reason if none frees in time: the host sees
at most the limit from one worker, and no URL waits longer than its deadline.
The limit holds for the URL's own host; redirect hops to other hosts are not counted.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit


def url_host(url: object) -> str | None:
    """The lower-cased host of ``url``, or None when it has none (the fetch reports why)."""
    if not isinstance(url, str):
        return None
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    return host or None


class HostSlots:
    """A semaphore per host, made on first use; one per fetch function (one shard)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._slots: dict[str, threading.BoundedSemaphore] = {}
        self.waits = 0  # requests that found their host full and waited
        self.gave_up = 0  # requests whose deadline passed before a slot freed

    @contextmanager
    def slot(self, url: str, seconds: float) -> Iterator[bool]:
        """Hold one of the host's slots while inside; yields False when none freed within
        ``seconds`` (the caller records a timeout and opens nothing)."""
        host = url_host(url) if self.limit is not None else None
        if host is None:
            yield True
            return
        with self._lock:
            sem = self._slots.setdefault(host, threading.BoundedSemaphore(self.limit))
        got = sem.acquire(blocking=False)
        if not got:
            with self._lock:
                self.waits += 1
            got = sem.acquire(timeout=max(0.0, seconds))
            if not got:
                with self._lock:
                    self.gave_up += 1
        try:
            yield got
        finally:
            if got:
                sem.release()
