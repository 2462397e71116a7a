"""What the guarded fetch may reach: :class:`FetchPolicy` and the limits every fetch obeys.

One frozen value per job, built from the config's ``filters.urls`` and
``download`` sections, so every shard and thread checks URLs and addresses the
same way.
"""

from __future__ import annotations

import io
import os
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from zhclip.filters.addresses import parse_networks

# A response bigger than this is not an image worth keeping; reading it whole
# would let one URL exhaust a worker's memory.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
# Without download.deadline, an image gets this many per-read timeouts in total.
DEADLINE_TIMEOUTS = 3.0

FetchResult = tuple[int, io.BytesIO | None, str | None]
FetchFunction = Callable[..., FetchResult]


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
    # Most requests one fetch function (a shard's threads) has open to one host; None: no limit.
    max_per_host: int | None = None

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
            max_per_host=getattr(cfg.download, "max_per_host", None),
            file_roots=tuple(os.path.realpath(s.image_root) for s in cfg.sources if s.image_root),
        )

    def file_allowed(self, url: str) -> bool:
        """Whether a file:// URL names a file under one of ``file_roots``."""
        if self.file_roots is None:
            return True
        path = os.path.realpath(urllib.request.url2pathname(urlsplit(url).path))
        return any(
            path == root or path.startswith(root.rstrip(os.sep) + os.sep)
            for root in self.file_roots
        )

    def deadline_seconds(self, timeout: float) -> float:
        """The whole-image time limit for a per-read ``timeout``."""
        return self.deadline if self.deadline is not None else DEADLINE_TIMEOUTS * timeout
