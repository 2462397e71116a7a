"""A simulated web on loopback for scale tests: many hosts, each with its own latency and
connection limit, serving the LAION-like mix of :mod:`demo.simweb_spec`.

Every virtual host listens on its own loopback address (127.0.1.2, 127.0.1.3, ...;
Linux routes all of 127.0.0.0/8 to ``lo``) on one shared port, so a crawler sees
distinct hosts. One asyncio loop in a child process serves them all: waiting
(latency, a host's connection limit, a hang) costs no thread, and the crawler
under test keeps its own interpreter. A control server on 127.0.0.1 reports
counts (connections, requests, the most connections a host served at once).
Nothing is stored: every answer is a function of the path.

    with SimWeb(hosts=64) as web:
        urls = web.urls(10_000)        # deterministic for a given host count and port
        ...
        web.stats()["connections"]
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
import sys
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from zhclip.pipeline.demo.child_server import ChildServer
from zhclip.pipeline.demo.simweb_images import JpegTemplates, encode_one
from zhclip.pipeline.demo.simweb_spec import (
    HANG_SECONDS,
    HostSpec,
    host_address,
    host_specs,
    plan,
    url_host,
    url_path,
)

CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
HEADER_LIMIT = 16 << 10  # a request head larger than this is refused
HEADER_SECONDS = 10.0  # a client that sends no full request head in this time is dropped
_HTML = b"<!doctype html><html><head><title>photo</title></head><body><img src=a.jpg></body></html>"


class _Web:
    """The serving side: host table, counters, and one handler for every host."""

    def __init__(self, hosts: list[HostSpec], port: int, workers: int = 2):
        self.hosts = hosts
        self.port = port
        self.templates = JpegTemplates()
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="simweb-encode")
        self.limits = {h.index: asyncio.Semaphore(h.connection_limit) for h in hosts}
        self.reset()

    def reset(self) -> None:
        self.connections: Counter[int] = Counter()
        self.requests: Counter[int] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.active: Counter[int] = Counter()
        self.max_active: Counter[int] = Counter()
        # Open connections, queued behind the host's limit or not: what the client pressed.
        self.open: Counter[int] = Counter()
        self.max_open: Counter[int] = Counter()
        self.cpu_at_reset = time.process_time()
        self.wall_at_reset = time.monotonic()

    def stats(self) -> dict:
        return {
            "connections": sum(self.connections.values()),
            "requests": sum(self.requests.values()),
            "outcomes": dict(self.outcomes),
            "per_host": {
                h.address: {
                    "connections": self.connections[h.index],
                    "requests": self.requests[h.index],
                    "max_active": self.max_active[h.index],
                    "max_open": self.max_open[h.index],
                    "limit": h.connection_limit,
                    "median_latency": h.median_latency,
                }
                for h in self.hosts
                if self.connections[h.index]
            },
            "server_cpu_s": time.process_time() - self.cpu_at_reset,
            "wall_s": time.monotonic() - self.wall_at_reset,
        }

    async def handle(self, host: HostSpec, reader, writer) -> None:
        self.connections[host.index] += 1
        self.open[host.index] += 1
        self.max_open[host.index] = max(self.max_open[host.index], self.open[host.index])
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEADER_SECONDS)
            method, target = head.split(b" ", 2)[:2]
            await self._answer(host, method.decode("latin1"), target.decode("latin1"), writer,
                               reader)
        except (
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
            ValueError,
        ):
            pass  # a client that hung up or sent garbage: nothing to answer
        finally:
            self.open[host.index] -= 1
            writer.close()

    async def _answer(self, host: HostSpec, method: str, target: str, writer, reader) -> None:
        self.requests[host.index] += 1
        path, _, query = target.partition("?")
        p = plan(path)
        outcome = p.outcome if "final=1" not in query else "ok"
        self.outcomes[outcome] += 1
        if outcome == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return
        if outcome == "hang":
            # Silent until the client gives up (its timeout), so open counts what clients hold.
            with contextlib.suppress(TimeoutError, ConnectionError):
                await asyncio.wait_for(reader.read(), HANG_SECONDS)
            return
        async with self.limits[host.index]:
            self.active[host.index] += 1
            self.max_active[host.index] = max(self.max_active[host.index], self.active[host.index])
            try:
                await asyncio.sleep(host.median_latency * p.latency_factor)
                await self._respond(host, method, path, query, p, outcome, writer)
            finally:
                self.active[host.index] -= 1

    async def _respond(self, host, method, path, query, p, outcome, writer) -> None:
        if outcome in ("redirect", "redirect_loop", "redirect_dead"):
            hop = int(query.split("hop=", 1)[1].split("&", 1)[0]) if "hop=" in query else 0
            if outcome == "redirect_loop":
                nxt = f"{path}?hop={1 - hop % 2}"
            elif hop >= p.hops:
                if outcome == "redirect_dead":
                    return await self._send(writer, method, 404, b"not found", "text/plain")
                nxt = f"{path}?final=1"
            else:
                nxt = f"{path}?hop={hop + 1}"
            target_host = self.hosts[(host.index + hop + 1) % len(self.hosts)]
            location = f"http://{target_host.address}:{self.port}{nxt}"
            return await self._send(writer, method, 302, b"", "text/plain", {"Location": location})
        if outcome in ("not_found", "gone", "server_error"):
            return await self._send(writer, method, p.status, b"<html>error</html>", "text/html")
        if outcome == "html":
            return await self._send(writer, method, 200, _HTML, "text/html")
        if outcome == "empty":
            return await self._send(writer, method, 200, b"", CONTENT_TYPES[p.fmt])
        if outcome == "slow":
            await asyncio.sleep(p.slow_seconds)
        body = await self.image(path, p)
        if outcome == "truncated":
            header = self._head(200, CONTENT_TYPES[p.fmt], len(body))
            writer.write(header + body[: len(body) // 2])
            await writer.drain()
            return
        await self._send(writer, method, 200, body, CONTENT_TYPES[p.fmt])

    async def image(self, path: str, p) -> bytes:
        stem = path.rsplit(".", 1)[0]
        if p.fmt == "jpg" and not p.progressive:
            if self.templates.ready(p.width, p.height, p.cmyk):
                return self.templates.assemble(stem, p.width, p.height, p.cmyk, p.orientation)
        loop = asyncio.get_running_loop()
        if p.fmt == "jpg" and not p.progressive:
            return await loop.run_in_executor(
                self.pool, self.templates.assemble, stem, p.width, p.height, p.cmyk, p.orientation
            )
        return await loop.run_in_executor(
            self.pool, encode_one, stem, p.fmt, p.width, p.height, p.progressive
        )

    @staticmethod
    def _head(status: int, content_type: str, length: int, extra: dict | None = None) -> bytes:
        lines = [
            f"HTTP/1.1 {status} X",
            f"Content-Type: {content_type}",
            f"Content-Length: {length}",
            "Connection: close",
        ]
        lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin1")

    async def _send(self, writer, method, status, body, content_type, extra=None) -> None:
        writer.write(self._head(status, content_type, len(body), extra))
        if method != "HEAD":
            writer.write(body)
        await writer.drain()


async def _control(web: _Web, reader, writer) -> None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEADER_SECONDS)
        target = head.split(b" ", 2)[1].decode("latin1")
        if target.startswith("/reset"):
            web.reset()
        body = json.dumps(web.stats()).encode()
        writer.write(_Web._head(200, "application/json", len(body)) + body)
        await writer.drain()
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def _serve(hosts: int, prewarm: bool) -> None:
    specs = host_specs(hosts)
    first = await asyncio.start_server(lambda r, w: None, specs[0].address, 0)
    port = first.sockets[0].getsockname()[1]
    first.close()
    web = _Web(specs, port)
    servers = []
    for spec in specs:
        handler = (lambda s: lambda r, w: web.handle(s, r, w))(spec)
        servers.append(
            await asyncio.start_server(
                handler, spec.address, port, limit=HEADER_LIMIT, backlog=1024, reuse_address=True
            )
        )
    control = await asyncio.start_server(lambda r, w: _control(web, r, w), "127.0.0.1", 0)
    if prewarm:
        from zhclip.pipeline.demo.simweb_spec import ASPECTS, WIDTHS

        loop = asyncio.get_running_loop()
        shapes = {(w, max(64, round(w * ah / aw / 16) * 16)) for w in WIDTHS for aw, ah in ASPECTS}
        keys = sorted(
            (w, h, cmyk) for w, h in shapes for cmyk in (False, True) if not cmyk or w <= 1024
        )
        await asyncio.gather(
            *(loop.run_in_executor(web.pool, web.templates.get, *key) for key in keys)
        )
    web.reset()
    ready = {"port": port, "control": f"http://127.0.0.1:{control.sockets[0].getsockname()[1]}"}
    print(json.dumps(ready), flush=True)
    await asyncio.Event().wait()  # served until the parent terminates the process


def _is_json(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


class SimWeb(ChildServer):
    """The simulated web in a child process; a context manager.

    ``prewarm`` renders every baseline-JPEG template before the web is ready
    (a few seconds), so a benchmark's first quarter is not slowed by it.
    """

    def __init__(self, hosts: int = 64, prewarm: bool = True):
        host_specs(hosts)  # validate before starting a process
        self.hosts = hosts
        self.prewarm = prewarm
        self.port = 0
        self.control = ""

    def __enter__(self) -> SimWeb:
        args = [sys.executable, "-m", "zhclip.pipeline.demo.simweb", "--hosts", str(self.hosts)]
        if not self.prewarm:
            args.append("--no-prewarm")
        ready = json.loads(self._start(args, "simulated web", _is_json))
        self.port, self.control = ready["port"], ready["control"]
        return self

    def url(self, n: int) -> str:
        """URL number ``n``: its host by a skewed draw, its path by :func:`url_path`."""
        return f"http://{host_address(url_host(n, self.hosts))}:{self.port}{url_path(n)}"

    def urls(self, count: int, start: int = 0) -> list[str]:
        return [self.url(n) for n in range(start, start + count)]

    def _control(self, path: str) -> dict:
        with urllib.request.urlopen(self.control + path, timeout=10) as response:  # noqa: S310
            return json.load(response)

    def stats(self) -> dict:
        """Counters since the last reset: connections, requests, outcomes, per host."""
        return self._control("/stats")

    def reset(self) -> dict:
        return self._control("/reset")


def _main() -> None:
    import argparse
    import signal

    ap = argparse.ArgumentParser(description="simulated web on loopback addresses")
    ap.add_argument("--hosts", type=int, default=64)
    ap.add_argument("--no-prewarm", action="store_true")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))  # nothing to flush; no task noise
    asyncio.run(_serve(args.hosts, not args.no_prewarm))


if __name__ == "__main__":
    _main()
