"""Column names of stage 2's output that pipeline.schema does not (yet) define.

img2dataset fixes most of them (status, error_message, original_width ...);
zhclip adds ``error_class`` and renames two stage-1 columns that would collide
with img2dataset's own ``width``/``height`` (the resized size). They are spelled
here once, next to the stage-1 names from pipeline.schema that travel unchanged.
"""

from __future__ import annotations

from pipeline import schema as S

# img2dataset's own columns in {shard}.parquet.
STATUS = "status"
ERROR_MESSAGE = "error_message"
RESIZED_WIDTH = S.WIDTH  # img2dataset writes the stored (resized) size as width/height
RESIZED_HEIGHT = S.HEIGHT
ORIGINAL_WIDTH = "original_width"  # size of the image as downloaded: trust this one
ORIGINAL_HEIGHT = "original_height"

STATUS_SUCCESS = "success"
STATUS_FAILED_TO_DOWNLOAD = "failed_to_download"
STATUS_FAILED_TO_RESIZE = "failed_to_resize"

# zhclip's additions.
ERROR_CLASS = "error_class"  # filters.download_errors class of error_message
SOURCE_WIDTH = "source_width"  # stage 1's width/height: what the source claimed
SOURCE_HEIGHT = "source_height"
INTERNAL_KEY = "_zhclip_key"  # stage-1 key on its way through img2dataset

# Stage-1 columns renamed on the way in (img2dataset owns key/width/height).
RENAMED_ON_INPUT = {S.KEY: INTERNAL_KEY, S.WIDTH: SOURCE_WIDTH, S.HEIGHT: SOURCE_HEIGHT}
# Stage-1 columns img2dataset takes as its url and caption columns.
IMG2DATASET_URL = "url"
IMG2DATASET_CAPTION = "caption"


def additional_columns() -> list[str]:
    """Stage-1 columns handed to img2dataset as save_additional_columns (after renaming)."""
    out = []
    for name in S.METADATA_COLUMNS:
        if name in (S.URL, S.CAPTION):
            continue
        out.append(RENAMED_ON_INPUT.get(name, name))
    return out
