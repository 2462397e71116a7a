"""The whole-image deadline of the guarded fetch, and the capped body read.

A socket timeout bounds each read, not the response: a host that sends one
byte per second never trips it. Every connection an image's fetch opens is
registered with one watchdog thread, which shuts the socket down when the
image's deadline passes; the blocked read then returns at once, whether it
waits for a header line or for the body, in plain HTTP or TLS.
"""

from __future__ import annotations

import heapq
import io
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from zhclip.pipeline.core.reasons import TIMEOUT, tagged


class Watchdog:
    """One thread that shuts down sockets whose deadline has passed."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, socket.socket, Deadline]] = []
        self._counter = 0
        self._thread: threading.Thread | None = None

    def watch(self, sock: socket.socket, deadline: Deadline) -> None:
        with self._cond:
            self._counter += 1
            heapq.heappush(self._heap, (deadline.at, self._counter, sock, deadline))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="zhclip-deadline", daemon=True
                )
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


watchdog = Watchdog()  # the one watchdog thread of the process
_current = threading.local()


class Deadline:
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
def deadline_scope(seconds: float) -> Iterator[Deadline]:
    deadline = Deadline(seconds)
    _current.deadline = deadline
    try:
        yield deadline
    finally:
        deadline.active = False
        _current.deadline = None


def timeout_within_deadline(timeout):
    deadline: Deadline | None = getattr(_current, "deadline", None)
    if deadline is None:
        return timeout, None
    left = max(0.001, deadline.remaining())
    if timeout is socket._GLOBAL_DEFAULT_TIMEOUT or timeout is None:
        return left, deadline
    return min(timeout, left), deadline


class DeadlinePassed(TimeoutError):
    """The image's total deadline passed while its response was being read."""


def read_capped(response, cap: int, deadline: Deadline | None = None) -> io.BytesIO | None:
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


def deadline_message(seconds: float) -> str:
    """The tagged reason of an image that outlasted its deadline."""
    return tagged(TIMEOUT, f"the image took longer than download.deadline ({seconds:g} s)")
