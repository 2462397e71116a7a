"""Column names and pyarrow schemas of every stage's output.

This is the one place a column name is spelled. Stages, filters, tests and the
inspection tools import the constants from here, so renaming a column is a
one-line change and a typo is an ImportError, not an empty column.
"""

from __future__ import annotations

import pyarrow as pa

# --- stage 1: metadata (URL shards) -----------------------------------------
KEY = "key"
# A copy of ``key`` under a name img2dataset's CLI does not reserve (it owns
# key, width, height in --save_additional_columns), so the stable key travels
# through a plain `img2dataset --save_additional_columns '["zhclip_key", ...]'`.
ZHCLIP_KEY = "zhclip_key"
URL = "url"
CAPTION = "caption"
CAPTION_ORIG = "caption_orig"
SOURCE = "source"
SOURCE_ID = "source_id"
SIMILARITY = "similarity"
WIDTH = "width"
HEIGHT = "height"
LICENSE = "license"
NSFW = "nsfw"
PUNSAFE = "punsafe"
PWATERMARK = "pwatermark"
REGION_X = "region_x"
REGION_Y = "region_y"
REGION_W = "region_w"
REGION_H = "region_h"

METADATA_SCHEMA = pa.schema(
    [
        pa.field(KEY, pa.string(), nullable=False),
        pa.field(URL, pa.string()),
        pa.field(CAPTION, pa.string()),
        pa.field(CAPTION_ORIG, pa.string()),
        pa.field(SOURCE, pa.string(), nullable=False),
        pa.field(SOURCE_ID, pa.string()),
        pa.field(SIMILARITY, pa.float64()),
        pa.field(WIDTH, pa.int64()),
        pa.field(HEIGHT, pa.int64()),
        pa.field(LICENSE, pa.string()),
        pa.field(NSFW, pa.string()),
        pa.field(PUNSAFE, pa.float64()),
        pa.field(PWATERMARK, pa.float64()),
        # Visual Genome region box (pixels of the original image); null elsewhere.
        pa.field(REGION_X, pa.int64()),
        pa.field(REGION_Y, pa.int64()),
        pa.field(REGION_W, pa.int64()),
        pa.field(REGION_H, pa.int64()),
        # Filled from key when a URL shard is written (url_shard_table); null in memory.
        pa.field(ZHCLIP_KEY, pa.string()),
    ]
)
METADATA_COLUMNS = METADATA_SCHEMA.names
# The columns `zhclip score` needs from a plain img2dataset download folder
# (REQUIRED: without source the per-source rules cannot run), and those it uses
# when present (zhclip_key restores the stable keys, the rest the final metadata).
I2D_REQUIRED_COLUMNS = (SOURCE,)
I2D_RECOMMENDED_COLUMNS = (ZHCLIP_KEY, SOURCE, SOURCE_ID, CAPTION_ORIG, SIMILARITY, LICENSE, NSFW)

# --- rejects (every stage) --------------------------------------------------
REASON = "reason"
STAGE = "stage"
MATCHED = "matched"  # the caption text a blacklist entry matched (null for other reasons)

REJECT_SCHEMA = pa.schema(
    [
        pa.field(KEY, pa.string()),
        pa.field(SOURCE, pa.string()),
        pa.field(URL, pa.string()),
        pa.field(CAPTION, pa.string()),
        pa.field(REASON, pa.string(), nullable=False),
        pa.field(STAGE, pa.string()),
        pa.field(MATCHED, pa.string()),
    ]
)
REJECT_COLUMNS = REJECT_SCHEMA.names

def url_shard_table(table: pa.Table) -> pa.Table:
    """``table`` as a stage-1 URL shard: METADATA_SCHEMA, with zhclip_key = key."""
    table = conform(table, METADATA_SCHEMA)
    return table.set_column(table.schema.get_field_index(ZHCLIP_KEY), ZHCLIP_KEY,
                            table.column(KEY).cast(pa.string()))


def empty_metadata_table() -> pa.Table:
    return METADATA_SCHEMA.empty_table()


def empty_reject_table() -> pa.Table:
    return REJECT_SCHEMA.empty_table()


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Return ``table`` with exactly ``schema``'s columns, in order.

    Missing columns become nulls and types are cast, so every reader can
    produce a partial table and still hand the next step the one schema.
    """
    n = table.num_rows
    arrays = []
    for field in schema:
        if field.name in table.column_names:
            col = table.column(field.name)
            if col.type != field.type:
                col = col.cast(field.type)
            arrays.append(col)
        else:
            arrays.append(pa.nulls(n, field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


# --- stage 2: downloads (img2dataset's {shard}.parquet) ----------------------
# img2dataset's own columns; width/height there are the stored (resized) size.
STATUS = "status"
ERROR_MESSAGE = "error_message"
ORIGINAL_WIDTH = "original_width"  # size of the image as downloaded: trust this one
ORIGINAL_HEIGHT = "original_height"
STATUS_SUCCESS = "success"
STATUS_FAILED_TO_DOWNLOAD = "failed_to_download"
STATUS_FAILED_TO_RESIZE = "failed_to_resize"
# zhclip's additions and renames (img2dataset owns key/width/height on input).
ERROR_CLASS = "error_class"  # zhclip.pipeline.core.reasons download error class
SOURCE_WIDTH = "source_width"  # stage 1's width/height: what the source claimed
SOURCE_HEIGHT = "source_height"
INTERNAL_KEY = "_zhclip_key"  # stage-1 key on its way through img2dataset

# --- stage 3: final shards (parquet sidecar / per-sample json) --------------
SCORE = "score"
SHA256 = "sha256"
SPLIT = "split"
SHARD = "shard"

DATASET_SCHEMA = pa.schema(
    [
        pa.field(KEY, pa.string(), nullable=False),
        pa.field(SOURCE, pa.string()),
        pa.field(URL, pa.string()),
        pa.field(CAPTION, pa.string()),
        pa.field(CAPTION_ORIG, pa.string()),
        pa.field(SCORE, pa.float64()),
        pa.field(WIDTH, pa.int64()),
        pa.field(HEIGHT, pa.int64()),
        pa.field(SHA256, pa.string()),
    ]
)
DATASET_COLUMNS = DATASET_SCHEMA.names

# Members of one webdataset sample in the final shards.
MEMBER_IMAGE = "jpg"
MEMBER_TEXT = "txt"
MEMBER_JSON = "json"
