"""Source kind -> reader, and the safe wrapper every file goes through."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from zhclip.pipeline.core import reasons as RS
from zhclip.pipeline.core.config import SourceConfig
from zhclip.pipeline.core.errors import ConfigError
from zhclip.pipeline.sources import coco, generic, laion, visual_genome, wukong
from zhclip.pipeline.sources.common import SourceBatch, file_reject

READERS: dict[str, Callable[[SourceConfig, str], Iterator[SourceBatch]]] = {
    "laion": laion.read,
    "wukong": wukong.read,
    "coco": coco.read,
    "visual_genome": visual_genome.read,
    "generic": generic.read,
}


def read_source_file(src: SourceConfig, path: str) -> Iterator[SourceBatch]:
    """Read one file; a file that cannot be read at all becomes one reject row.

    Errors inside a reader are caught here so that one corrupt file out of
    thousands does not kill a day-long job; the report names it.
    """
    try:
        yield from READERS[src.kind](src, path)
    except ConfigError:
        raise  # the config's own files (a held-out id list): fixing them is the user's, not a reject
    except (ValueError, OSError, KeyError, UnicodeDecodeError) as err:
        yield file_reject(src.name, path, RS.REASON_MALFORMED_FILE, f"{type(err).__name__}: {err}")
