"""Held-out COCO image ids (Karpathy test split, COCO-CN test split), in the
formats those lists are distributed in.

A text file holds one image per line, as any of:

- a bare id: ``391895``;
- a COCO file name, with or without a folder: ``COCO_val2014_000000391895.jpg``,
  ``val2014/COCO_val2014_000000391895.jpg``, ``COCO_val2014_000000391895``, or the
  2017 naming ``000000391895.jpg``;
- a COCO-CN line: ``COCO_val2014_000000391895#0``, optionally followed by a TAB
  and the caption (COCO-CN's caption files) -- the ``#n`` is the caption number,
  not an id.

Blank lines and lines starting with ``#`` are skipped; `` # ...`` after an id
is a comment. A JSON file is read as Karpathy's split file (dataset_coco.json:
``images`` with ``cocoid`` and ``split``), keeping the ``test`` images.

Any line that is none of these stops the job with the file and line number
(:class:`ConfigError`): a line skipped or misread (the last number on
``COCO_val2014_000000391896#0`` is 0) leaves test images in pretraining,
which no later stage can notice.
"""

from __future__ import annotations

import json
import re

from zhclip.pipeline.core import paths
from zhclip.pipeline.core.errors import ConfigError

KARPATHY_TEST_SPLIT = "test"
_BARE = re.compile(r"\d+")
_COCO_NAME = re.compile(
    r"(?:.*/)?COCO_[a-z]+\d{4}_(\d{12})(?:\.(?:jpe?g|png))?(?:#\d+)?", re.IGNORECASE)
_COCO2017_NAME = re.compile(r"(?:.*/)?(\d{12})\.(?:jpe?g|png)", re.IGNORECASE)
_INLINE_COMMENT = re.compile(r"\s+#")
FORMATS = (
    "a bare id (391895), a COCO file name (COCO_val2014_000000391895.jpg), "
    "a COCO-CN line (COCO_val2014_000000391895#0, optionally TAB caption) "
    "or a Karpathy split json (dataset_coco.json)"
)


def parse_holdout_line(line: str) -> int | None:
    """The image id on one line; None for a blank or comment line.

    Raises ValueError when the line is none of the accepted forms.
    """
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    if "\t" in text:
        token = text.split("\t", 1)[0].strip()  # COCO-CN: id TAB caption
    else:
        token = _INLINE_COMMENT.split(text, maxsplit=1)[0].strip()
    if _BARE.fullmatch(token):
        return int(token)
    for pattern in (_COCO_NAME, _COCO2017_NAME):
        m = pattern.fullmatch(token)
        if m:
            return int(m.group(1))
    raise ValueError(f"no COCO image id in {line.strip()!r}")


def parse_holdout_text(text: str, origin: str) -> frozenset[int]:
    """Ids of a line-per-image list; ``origin`` names the file in errors."""
    ids: set[int] = set()
    for lineno, line in enumerate(text.splitlines(), 1):
        try:
            image_id = parse_holdout_line(line)
        except ValueError as err:
            raise ConfigError(f"{origin}:{lineno}: {err}; expected {FORMATS}") from None
        if image_id is not None:
            ids.add(image_id)
    return frozenset(ids)


def parse_karpathy_json(text: str, origin: str,
                        split: str = KARPATHY_TEST_SPLIT) -> frozenset[int]:
    """``cocoid`` of every image of ``split`` in a Karpathy split file."""
    try:
        data = json.loads(text)
    except ValueError as err:
        raise ConfigError(f"{origin}: not valid JSON ({err})") from None
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise ConfigError(f"{origin}: expected a Karpathy split file ({{'images': [...]}}, "
                          f"as dataset_coco.json); expected {FORMATS}")
    ids: set[int] = set()
    for i, img in enumerate(images):
        if not isinstance(img, dict) or not isinstance(img.get("split"), str) \
                or not isinstance(img.get("cocoid"), int):
            raise ConfigError(f"{origin}: images[{i}] has no integer 'cocoid' and 'split' "
                              "(a Karpathy COCO split file names both for every image)")
        if img["split"] == split:
            ids.add(img["cocoid"])
    if images and not ids:
        raise ConfigError(f"{origin}: no image has split {split!r}; this is not the split file "
                          "whose test images should be held out")
    return frozenset(ids)


def load_holdout_ids(path: str | list[str] | None) -> frozenset[int]:
    """Held-out ids of a file, or the union over a list of files (Karpathy test +
    COCO-CN test); see the module doc for the formats. Empty for no file."""
    if isinstance(path, list):
        return frozenset().union(*(load_holdout_ids(p) for p in path))
    if not path:
        return frozenset()
    text = paths.read_text(path)
    if path.lower().endswith(".json") or text.lstrip().startswith("{"):
        return parse_karpathy_json(text, path)
    return parse_holdout_text(text, path)
