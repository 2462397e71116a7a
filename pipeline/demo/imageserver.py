"""A real HTTP image server on 127.0.0.1, with the faults real crawls meet.

Tests, the download benchmark and ``zhclip demo`` need images to download with
no network. This server listens on an ephemeral loopback port in a background
thread and serves generated JPEG/PNG/WebP images at deterministic paths, plus
one path per fault: 404, 500, a response slower than any sane timeout, a
truncated JPEG, an HTML page, an empty body, a decompression bomb header, a
redirect loop, redirects to private addresses, an X-Robots-Tag opt-out and a
valid image under a wrong Content-Type. Redirect targets outside loopback are
only ever named in a Location header; the server itself never connects out.

    with ImageServer() as server:
        url = server.image_url("cat", "jpg")          # a 200 with a JPEG
        bad = server.fault_url("truncated_jpeg")      # see FAULTS
        server.fail_next("/img/dog.png", 2)           # two 503s, then the image
"""

from __future__ import annotations

import hashlib
import io
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlsplit

from PIL import Image
from zhclip.pipeline.demo.child_server import ChildServer
from zhclip.pipeline.demo.faults import (  # noqa: F401 - re-exported names
    BMP_BOMB_SIDE,
    BOMB_SIDE,
    FAULTS,
    HOSTILE,
    JPEG_BOMB_SIDE,
    METADATA_REDIRECT_TARGET,
    PRIVATE_REDIRECT_TARGET,
    Fault,
    decompression_bomb_png,
    jpeg_with_junk_before_sof,
    rle_bmp_bomb,
)

CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
PIL_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
DEFAULT_SIZE = (96, 72)


def render_image(name: str, fmt: str = "jpg", width: int = DEFAULT_SIZE[0],
                 height: int = DEFAULT_SIZE[1]) -> bytes:
    """A deterministic picture for ``name``: a two-colour gradient seeded by its hash."""
    if fmt not in PIL_FORMATS:
        raise ValueError(f"image format {fmt!r} is not one of {sorted(PIL_FORMATS)}")
    seed = hashlib.sha256(name.encode("utf-8")).digest()
    c0, c1 = seed[:3], seed[3:6]
    row = bytearray()
    for x in range(width):
        t = x / max(1, width - 1)
        row += bytes(int(a * (1 - t) + b * t) for a, b in zip(c0, c1, strict=True))
    img = Image.frombytes("RGB", (width, height), bytes(row) * height)
    buf = io.BytesIO()
    img.save(buf, PIL_FORMATS[fmt], quality=90) if fmt != "png" else img.save(buf, "PNG")
    return buf.getvalue()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"

    def log_message(self, format, *args):  # noqa: A002 - signature of the base class
        pass  # tests and the benchmark want quiet output

    def _send(self, status: int, body: bytes = b"", content_type: str | None = None,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self._send(302, b"", "text/plain", {"Location": location})

    def do_HEAD(self):  # noqa: N802 - http.server naming
        self.do_GET()

    def do_GET(self):  # noqa: N802 - http.server naming
        owner = self.server.owner
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        owner._count(path, self.headers.get("Host"))
        if owner._should_fail(path, self.path, query):
            self._send(503, b"try again later", "text/plain")
            return
        if path.startswith("/img/"):
            self._serve_image(path, query)
        elif path.startswith("/flaky/"):
            self._serve_image(path, query)
        elif path == "/redirect":
            self._redirect(query.get("to", ["/"])[0])
        elif path.startswith("/fault/"):
            self._serve_fault(path)
        elif path.startswith("/hostile/"):
            self._serve_hostile(path)
        else:
            self._send(404, b"not found", "text/plain")

    def _serve_image(self, path: str, query: dict) -> None:
        name, _, fmt = path.rsplit("/", 1)[-1].rpartition(".")
        if fmt not in PIL_FORMATS or not name:
            self._send(404, b"unknown image format", "text/plain")
            return
        width = int(query.get("w", [DEFAULT_SIZE[0]])[0])
        height = int(query.get("h", [DEFAULT_SIZE[1]])[0])
        owner = self.server.owner
        if owner.image_delay:
            owner._stopping.wait(owner.image_delay)
        body = owner.image_bytes(name, fmt, width, height)
        self._send(200, body, CONTENT_TYPES[fmt])

    def _serve_fault(self, path: str) -> None:
        owner = self.server.owner
        jpeg = owner.image_bytes("fault", "jpg", *DEFAULT_SIZE)
        if path == FAULTS["http_404"].path:
            self._send(404, b"<html>not found</html>", "text/html")
        elif path == FAULTS["http_500"].path:
            self._send(500, b"<html>server error</html>", "text/html")
        elif path == FAULTS["slow"].path:
            owner._stopping.wait(owner.slow_seconds)
            self._send(200, jpeg, "image/jpeg")
        elif path == FAULTS["truncated_jpeg"].path:
            self._send(200, jpeg[: len(jpeg) // 2], "image/jpeg")
        elif path == FAULTS["html_body"].path:
            self._send(200, b"<!doctype html><html><body>moved</body></html>", "text/html")
        elif path == FAULTS["empty_body"].path:
            self._send(200, b"", "image/jpeg")
        elif path == FAULTS["decompression_bomb"].path:
            self._send(200, decompression_bomb_png(), "image/png")
        elif path == FAULTS["redirect_loop"].path:
            self._redirect(path)
        elif path == FAULTS["redirect_private"].path:
            self._redirect(PRIVATE_REDIRECT_TARGET)
        elif path == FAULTS["redirect_metadata"].path:
            self._redirect(METADATA_REDIRECT_TARGET)
        elif path == FAULTS["robots_noai"].path:
            self._send(200, jpeg, "image/jpeg", {"X-Robots-Tag": "noai"})
        elif path == FAULTS["wrong_content_type"].path:
            self._send(200, jpeg, "text/html")
        else:
            self._send(404, b"no such fault", "text/plain")


    def _drip(self, data: bytes) -> None:
        """Write ``data`` one byte per ``drip_interval`` until done, stopped or hung up on."""
        owner = self.server.owner
        for i in range(len(data)):
            if owner._stopping.wait(owner.drip_interval):
                return
            self.wfile.write(data[i : i + 1])
            self.wfile.flush()

    def _serve_hostile(self, path: str) -> None:
        owner = self.server.owner
        jpeg = owner.image_bytes("hostile", "jpg", *DEFAULT_SIZE)
        w = self.wfile
        if path == HOSTILE["drip_headers"].path:
            w.write(b"HTTP/1.0 200 OK\r\nContent-Type: image/jpeg\r\nX-Drip: ")
            w.flush()
            self._drip(b"x" * owner.drip_bytes)
        elif path == HOSTILE["drip_body"].path:
            w.write(b"HTTP/1.0 200 OK\r\nContent-Type: image/jpeg\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(jpeg))
            w.flush()
            self._drip(jpeg[: owner.drip_bytes])
        elif path == HOSTILE["chunked_small_length"].path:
            w.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 1000\r\n"
                    b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
            chunk = b"\xab" * (1 << 16)
            for _ in range(owner.chunked_bytes // len(chunk)):
                if owner._stopping.is_set():
                    return
                w.write(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            w.write(b"0\r\n\r\n")
        elif path == HOSTILE["jpeg_junk_before_sof"].path:
            self._send(200, jpeg_with_junk_before_sof(jpeg), "image/jpeg")
        elif path == HOSTILE["rle_bmp_bomb"].path:
            self._send(200, rle_bmp_bomb(), "image/bmp")
        else:
            self._send(404, b"no such hostile response", "text/plain")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
    owner: ImageServer

    def handle_error(self, request, client_address):
        # A client that timed out and hung up (the ``slow`` fault) is expected.
        import sys

        if isinstance(sys.exc_info()[1], ConnectionError | ValueError):  # hung up mid-write
            return
        super().handle_error(request, client_address)


class _ServerUrls:
    """URL building shared by the in-process server and the one in a child process."""

    base_url: str

    def url(self, path: str) -> str:
        return self.base_url + path

    def image_url(self, name: str, fmt: str = "jpg", width: int | None = None,
                  height: int | None = None, fail: int = 0) -> str:
        """URL of a generated image; ``fail=N`` makes its first N requests answer 503."""
        query = []
        if width:
            query.append(f"w={width}")
        if height:
            query.append(f"h={height}")
        if fail:
            query.append(f"fail={fail}")
        return self.url(f"/img/{name}.{fmt}" + ("?" + "&".join(query) if query else ""))

    def fault_url(self, kind: str) -> str:
        if kind not in FAULTS:
            raise KeyError(f"unknown fault {kind!r}; known: {sorted(FAULTS)}")
        return self.url(FAULTS[kind].path)

    def hostile_url(self, kind: str) -> str:
        """URL of one of :data:`HOSTILE`'s responses."""
        if kind not in HOSTILE:
            raise KeyError(f"unknown hostile response {kind!r}; known: {sorted(HOSTILE)}")
        return self.url(HOSTILE[kind].path)

    def redirect_url(self, target: str) -> str:
        """A URL that answers 302 to ``target`` (which is never fetched by the server)."""
        return self.url("/redirect?to=" + quote(target, safe=""))


class ImageServer(_ServerUrls):
    """The loopback image server; a context manager that starts and stops it.

    ``slow_seconds`` is how long the ``slow`` fault waits before answering:
    set the download timeout below it. ``drip_interval``, ``drip_bytes`` and
    ``chunked_bytes`` shape the :data:`HOSTILE` responses. ``image_delay`` slows every image
    answer, for jobs that must still be running when a test interrupts them.
    """

    def __init__(self, slow_seconds: float = 3.0, host: str = "127.0.0.1",
                 image_delay: float = 0.0, drip_interval: float = 0.2, drip_bytes: int = 600,
                 chunked_bytes: int = 80 << 20):
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("ImageServer only listens on loopback")
        self.slow_seconds = slow_seconds
        self.drip_interval = drip_interval  # seconds between bytes of the drip responses
        self.drip_bytes = drip_bytes  # bytes a drip sends before it ends (2 minutes at 0.2 s)
        self.chunked_bytes = chunked_bytes  # body size behind the chunked response's 1000
        self.image_delay = image_delay  # seconds before each /img/ answer (long-running jobs)
        self.host = host
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._images: dict[tuple[str, str, int, int], bytes] = {}
        self._fail_remaining: dict[str, int] = {}
        self._query_failures: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        self.host_headers: dict[str, str | None] = {}  # path -> Host header of its last request
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- life cycle ---
    def start(self) -> ImageServer:
        self._httpd = _Server((self.host, 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
            name="zhclip-imageserver", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> ImageServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- address ---
    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("ImageServer is not running; use it as a context manager")
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # --- behaviour switches and counters ---
    def fail_next(self, path: str, times: int) -> None:
        """Answer the next ``times`` requests for ``path`` (or a full URL) with 503."""
        with self._lock:
            self._fail_remaining[urlsplit(path).path] = times

    def request_count(self, path: str) -> int:
        with self._lock:
            return self.requests[urlsplit(path).path]

    def image_bytes(self, name: str, fmt: str, width: int, height: int) -> bytes:
        key = (name, fmt, width, height)
        with self._lock:
            cached = self._images.get(key)
        if cached is None:
            cached = render_image(name, fmt, width, height)
            with self._lock:
                self._images[key] = cached
        return cached

    def _count(self, path: str, host: str | None = None) -> None:
        with self._lock:
            self.requests[path] += 1
            self.host_headers[path] = host

    def _should_fail(self, path: str, raw: str, query: dict) -> bool:
        with self._lock:
            left = self._fail_remaining.get(path, 0)
            if left > 0:
                self._fail_remaining[path] = left - 1
                return True
            fail = int(query.get("fail", ["0"])[0] or 0)
            if fail and self._query_failures[raw] < fail:
                self._query_failures[raw] += 1
                return True
        return False


class ImageServerProcess(ChildServer, _ServerUrls):
    """The same server in a child process, so it does not share the client's GIL.

    For benchmarks: a real image host is another machine, and a server thread in
    the downloading process would slow the download down by competing for the
    interpreter. Switches and counters live in the child and are not reachable.
    """

    def __init__(self, slow_seconds: float = 3.0, image_delay: float = 0.0):
        self.slow_seconds = slow_seconds
        self.image_delay = image_delay
        self.base_url = ""

    def __enter__(self) -> ImageServerProcess:
        args = [sys.executable, "-m", "zhclip.pipeline.demo.imageserver",
                "--slow-seconds", str(self.slow_seconds), "--image-delay", str(self.image_delay)]
        self.base_url = self._start(args, "image server process",
                                    lambda line: line.startswith("http://127.0.0.1:"))
        return self


def _serve_main() -> None:
    """``python -m zhclip.pipeline.demo.imageserver``: print the base URL, serve until terminated."""
    import argparse
    import signal

    ap = argparse.ArgumentParser(description="loopback image server with faults")
    ap.add_argument("--slow-seconds", type=float, default=3.0)
    ap.add_argument("--image-delay", type=float, default=0.0)
    args = ap.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with ImageServer(slow_seconds=args.slow_seconds, image_delay=args.image_delay) as server:
        print(server.base_url, flush=True)
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    _serve_main()
