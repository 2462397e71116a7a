"""Source kind -> reader, and the safe wrapper every file goes through."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from zhclip.pipeline.core import reasons as RS
from zhclip.pipeline.core.config import SourceConfig
from zhclip.pipeline.core.errors import ConfigError
from zhclip.pipeline.sources import coco, generic, laion, visual_genome, wukong
from zhclip.pipeline.sources.common import PartialRead, SourceBatch, file_reject

READERS: dict[str, Callable[[SourceConfig, str], Iterator[SourceBatch]]] = {
    "laion": laion.read,
    "wukong": wukong.read,
    "coco": coco.read,
    "visual_genome": visual_genome.read,
    "generic": generic.read,
}


def read_source_file(src: SourceConfig, path: str) -> Iterator[SourceBatch]:
    """Read one file; whatever a file does, the job goes on and every row is accounted.

    Errors inside a reader are caught here so that one corrupt file out of
    thousands does not kill a day-long job; the report names it. A file that
    fails partway keeps the rows already read; the rest become
    ``malformed_file``: one reject row naming the file and why, plus a count
    for the other unread rows when the footer says how many (parquet), else
    the file is marked so the report says "unknown" rather than "balanced".
    """
    consumed = 0
    try:
        for b in READERS[src.kind](src, path):
            consumed += b.rows_in
            yield b
    except (MemoryError, KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except ConfigError:
        raise  # the config's own files (a held-out id list): fixing them is the user's, not a reject
    except Exception as err:  # noqa: BLE001 - a file must never end the job
        yield _failure(src, path, err, consumed)


def _failure(src: SourceConfig, path: str, err: Exception, consumed: int) -> SourceBatch:
    cause = err.cause if isinstance(err, PartialRead) else err
    detail = f"{type(cause).__name__}: {str(cause)[:500]}"
    if consumed:
        detail = f"after {consumed} rows: {detail}"
    failed = file_reject(src.name, path, RS.REASON_MALFORMED_FILE, detail)
    if isinstance(err, PartialRead):
        rest = err.total_rows - consumed - 1  # the reject row stands for one unread row
        if rest > 0:
            failed.skipped[RS.REASON_MALFORMED_FILE] = rest
    elif consumed:
        failed.unknown = 1  # rows after the failure point cannot be counted
    return failed
