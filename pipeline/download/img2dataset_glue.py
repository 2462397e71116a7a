"""img2dataset's per-shard Downloader, assembled from zhclip's config.

img2dataset is used as a library: its Resizer, its webdataset sample writer
and its Downloader, which takes one shard at a time. Two thin wrappers adapt
it: :class:`CheckedResizer` looks at the bytes before they are decoded (empty,
HTML, truncated, decompression-bomb headers; see filters.image_header), and
:func:`zhclip_sample_writer` makes the stage-1 key the sample key and adds
an ``error_class`` column, so downstream stages join on the key they know.
"""

from __future__ import annotations

import importlib
import os

import pyarrow as pa
from zhclip.filters.image_header import check_image_bytes
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.download.columns import (
    ERROR_CLASS,
    ERROR_MESSAGE,
    IMG2DATASET_CAPTION,
    IMG2DATASET_URL,
    INTERNAL_KEY,
    STATUS,
    STATUS_SUCCESS,
    additional_columns,
)
from zhclip.pipeline.download.errors import classify_error
from zhclip.pipeline.shards.format import member_stem

# img2dataset names a shard's files by its integer id; each zhclip shard runs
# alone in its own work folder as shard 0, so its files are always these.
WORK_SHARD_ID = 0
WORK_OOM_SHARD_COUNT = 5
WORK_NAME = f"{WORK_SHARD_ID:0{WORK_OOM_SHARD_COUNT}d}"


def img2dataset_module(name: str):
    """Import ``img2dataset.<name>``; albumentations, which it imports, is kept from
    checking the network for a newer version of itself."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    return importlib.import_module(f"img2dataset.{name}")


class CheckedResizer:
    """img2dataset's Resizer behind a look at the raw bytes.

    The decoder allocates the size a header claims before it notices the data
    is missing, so a 30000x30000 header must be refused before decoding, not by
    the Resizer's own area check after it.
    """

    def __init__(self, resizer, max_image_area: float):
        self.resizer = resizer
        self.max_image_area = max_image_area

    def __call__(self, img_stream, blurring_bbox_list=None):
        problem = check_image_bytes(img_stream.getvalue(), self.max_image_area)
        if problem is not None:
            return None, None, None, None, None, problem
        img_stream.seek(0)
        return self.resizer(img_stream, blurring_bbox_list)


def zhclip_sample_writer(base):
    """Subclass img2dataset's sample writer ``base`` to write stage-1 keys.

    img2dataset numbers samples by their position in the shard; zhclip's key
    (source + source id) is carried as a hidden column and swapped in here,
    for the tar member names, the json and the parquet ``key`` column alike.
    """

    class ZhclipSampleWriter(base):
        def __init__(self, shard_id, output_folder, save_caption, oom_shard_count, schema,
                     encode_format):
            schema = schema.remove(schema.get_field_index(INTERNAL_KEY))
            schema = schema.append(pa.field(ERROR_CLASS, pa.string()))
            super().__init__(shard_id, output_folder, save_caption, oom_shard_count, schema,
                             encode_format)

        def write(self, img_str, key, caption, meta):
            true_key = meta.pop(INTERNAL_KEY)
            meta[S.KEY] = true_key
            status = meta.get(STATUS)
            meta[ERROR_CLASS] = (
                None if status == STATUS_SUCCESS else classify_error(meta.get(ERROR_MESSAGE))
            )
            super().write(img_str, member_stem(true_key), caption, meta)

    ZhclipSampleWriter.__name__ = f"Zhclip{base.__name__}"
    return ZhclipSampleWriter


def column_list() -> list[str]:
    """The columns img2dataset's Downloader reads from an input shard, in its order."""
    return additional_columns() + [IMG2DATASET_CAPTION, IMG2DATASET_URL]


def build_resizer(dcfg):
    """img2dataset Resizer for a :class:`pipeline.config.DownloadConfig`."""
    Resizer = img2dataset_module("resizer").Resizer  # noqa: N806 - a class

    quality = dcfg.encode_quality
    if dcfg.encode_format == "png":
        # For PNG img2dataset reads the quality as a zlib compression level 0-9.
        quality = min(9, quality)
    return Resizer(
        image_size=dcfg.image_size,
        resize_mode=dcfg.resize_mode,
        resize_only_if_bigger=False,
        encode_quality=quality,
        encode_format=dcfg.encode_format,
        min_image_size=dcfg.min_image_size,
        max_image_area=dcfg.max_image_area,
        max_aspect_ratio=dcfg.max_aspect_ratio,
    )


def build_downloader(dcfg, output_folder: str, rows: int):
    """img2dataset Downloader writing webdataset files for one shard into ``output_folder``."""
    Downloader = img2dataset_module("downloader").Downloader  # noqa: N806 - a class
    WebDatasetSampleWriter = img2dataset_module("writer").WebDatasetSampleWriter  # noqa: N806

    directives = list(dcfg.disallowed_header_directives) or None
    return Downloader(
        sample_writer_class=zhclip_sample_writer(WebDatasetSampleWriter),
        resizer=CheckedResizer(build_resizer(dcfg), dcfg.max_image_area),
        thread_count=dcfg.thread_count,
        save_caption=True,
        extract_exif=False,
        output_folder=output_folder,
        column_list=column_list(),
        timeout=dcfg.timeout,
        number_sample_per_shard=max(10, rows),
        oom_shard_count=WORK_OOM_SHARD_COUNT,
        compute_hash=dcfg.compute_hash,
        verify_hash_type=None,
        encode_format=dcfg.encode_format,
        retries=dcfg.retries,
        user_agent_token=dcfg.user_agent_token,
        disallowed_header_directives=directives,
    )

