"""Held-out COCO image ids (Karpathy test split, COCO-CN test), one per line."""

from __future__ import annotations

import re

from zhclip.pipeline.core import paths

_ID = re.compile(r"(\d+)")


def load_holdout_ids(path: str | None) -> frozenset[int]:
    """Read ids; a line may be a bare id or a COCO file name (COCO_val2014_000000391895.jpg).

    Blank lines and '#' comments are ignored; any other line without a number
    is an error naming the line, since a silently skipped id leaks test images.
    """
    if not path:
        return frozenset()
    ids: set[int] = set()
    for lineno, line in enumerate(paths.read_text(path).splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        found = _ID.findall(line)
        if not found:
            raise ValueError(f"{path}:{lineno}: no image id in {line!r}")
        ids.add(int(found[-1]))
    return frozenset(ids)
