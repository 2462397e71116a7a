"""What the simulated web serves: its hosts, its mix of outcomes, and each URL's plan.

Everything here is a pure function of a URL's path and the host count, so the
server, the URL-list writer and the tests agree on what any URL will do
without a stored table. Proportions follow what LAION-style crawls meet: about
70% of URLs give an image, the rest are dead links, server errors, hangs,
redirect chains, HTML pages, cut bodies and resets.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

# Outcome -> share of URLs. "live" outcomes end in an image.
OUTCOMES: dict[str, float] = {
    "ok": 0.63,
    "redirect": 0.04,  # a 1-3 hop chain (some across hosts) that ends in an image
    "slow": 0.03,  # an image after 0.5-2 s: slow but inside any sane timeout
    "not_found": 0.09,  # 404
    "gone": 0.02,  # 410
    "server_error": 0.04,  # 500 / 502 / 503
    "hang": 0.02,  # headers never come: only the client's deadline ends it
    "html": 0.04,  # a 200 with an HTML page
    "truncated": 0.03,  # Content-Length promises more than is sent
    "reset": 0.02,  # the connection is reset before any answer
    "redirect_loop": 0.01,  # a chain that never ends
    "empty": 0.01,  # a 200 with an empty body
    "redirect_dead": 0.02,  # a chain that ends in a 404
}
LIVE = frozenset({"ok", "redirect", "slow"})

# Image formats of live URLs and their shares; the rest of an image's look.
FORMATS: dict[str, float] = {"jpg": 0.85, "png": 0.10, "webp": 0.05}
PROGRESSIVE_SHARE = 0.08  # of JPEGs
CMYK_SHARE = 0.04  # of JPEGs up to 1,024 px wide (print scans are rarely larger)
EXIF_ROTATED_SHARE = 0.05  # of JPEGs: an Orientation tag of 3, 6 or 8
WIDTHS = (200, 256, 320, 400, 480, 640, 800, 1024, 1280, 1600, 2000)
WIDTH_WEIGHTS = (4, 6, 8, 10, 12, 16, 14, 12, 8, 6, 4)
ASPECTS = ((4, 3), (3, 4), (1, 1), (16, 9), (3, 2))
HANG_SECONDS = 30.0  # a hang answers nothing this long, then closes (a bounded loop)
MAX_REDIRECTS = 3

# Host shapes: (share of hosts, median latency s, connection limit).
HOST_KINDS = (
    (0.60, 0.010, 16),
    (0.30, 0.040, 8),
    (0.08, 0.150, 4),
    (0.02, 0.600, 2),  # the slow host a crawler must not let hold every thread
)


def _unit(*parts: object) -> float:
    """A deterministic number in [0, 1) from ``parts``."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _pick(u: float, weights: dict[str, float] | tuple) -> object:
    items = list(weights.items()) if isinstance(weights, dict) else list(weights)
    total = sum(w for _, w in items)
    acc = 0.0
    for value, w in items:
        acc += w / total
        if u < acc:
            return value
    return items[-1][0]


@dataclass(frozen=True)
class HostSpec:
    """One virtual host: its loopback address, latency and connection limit."""

    index: int
    address: str
    median_latency: float
    connection_limit: int


def host_address(index: int) -> str:
    """Loopback address of host ``index`` (0-based): 127.0.1.1, 127.0.1.2, ... 127.0.x.y."""
    n = index + 1
    return f"127.0.{1 + n // 250}.{1 + n % 250}"


def host_specs(count: int) -> list[HostSpec]:
    """The hosts of a web of ``count`` hosts; host 0 is always fast, the last is always slow."""
    if not 1 <= count <= 2000:
        raise ValueError(f"host count {count} is not within 1..2000")
    specs = []
    for i in range(count):
        kind = _pick(_unit("host", i), [((lat, lim), share) for share, lat, lim in HOST_KINDS])
        if count > 1 and i == count - 1:
            kind = (HOST_KINDS[-1][1], HOST_KINDS[-1][2])
        elif i == 0:
            kind = (HOST_KINDS[0][1], HOST_KINDS[0][2])
        specs.append(HostSpec(i, host_address(i), kind[0], kind[1]))
    return specs


def url_host(n: int, hosts: int) -> int:
    """Which host URL number ``n`` lives on: a Zipf-like skew, a few hosts hold many URLs."""
    u = _unit("url-host", n)
    # Inverse CDF of a 1/rank^0.8 weighting, closed form within a few percent.
    return min(hosts - 1, int(hosts * u**2.2))


@dataclass(frozen=True)
class Plan:
    """What one path will do when requested."""

    outcome: str
    fmt: str
    width: int
    height: int
    progressive: bool
    cmyk: bool
    orientation: int  # EXIF Orientation, 1 = none
    latency_factor: float  # multiplies the host's median latency (log-normal, sigma 0.5)
    status: int  # for error outcomes
    hops: int  # for redirects
    slow_seconds: float


def _stem(path: str) -> str:
    """A path without query and extension: what a URL's plan is drawn from."""
    path = path.split("?", 1)[0]
    head, dot, ext = path.rpartition(".")
    return head if dot and "/" not in ext else path


def plan(path: str) -> Plan:
    """The plan of a request path (query and extension ignored): outcome, image, delays."""
    stem = _stem(path)
    u = lambda tag: _unit(tag, stem)  # noqa: E731 - a short local helper
    outcome = str(_pick(u("outcome"), OUTCOMES))
    fmt = str(_pick(u("fmt"), FORMATS))
    width = int(_pick(u("w"), tuple(zip(WIDTHS, WIDTH_WEIGHTS, strict=True))))
    aw, ah = ASPECTS[int(u("aspect") * len(ASPECTS))]
    height = max(64, round(width * ah / aw / 16) * 16)
    jpeg = fmt == "jpg"
    progressive = jpeg and u("prog") < PROGRESSIVE_SHARE
    cmyk = jpeg and not progressive and width <= 1024 and u("cmyk") < CMYK_SHARE
    orientation = (3, 6, 8)[int(u("o") * 3)] if jpeg and u("exif") < EXIF_ROTATED_SHARE else 1
    z = math.sqrt(-2 * math.log(max(u("lat1"), 1e-12))) * math.cos(2 * math.pi * u("lat2"))
    status = {"not_found": 404, "gone": 410}.get(outcome) or (500, 502, 503)[int(u("s") * 3)]
    return Plan(
        outcome=outcome,
        fmt=fmt,
        width=width,
        height=height,
        progressive=progressive,
        cmyk=cmyk,
        orientation=orientation,
        latency_factor=math.exp(0.5 * z),
        status=status,
        hops=1 + int(u("hops") * MAX_REDIRECTS),
        slow_seconds=0.5 + 1.5 * u("slow"),
    )


def url_path(n: int) -> str:
    """The path of URL number ``n``; its extension names the format its plan serves."""
    stem = f"/i/{n:09d}"
    return f"{stem}.{plan(stem).fmt}"
