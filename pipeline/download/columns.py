"""How stage 1's columns map onto img2dataset's input and output (names from pipeline.schema).

img2dataset fixes most of them (status, error_message, original_width ...);
zhclip adds ``error_class`` and renames two stage-1 columns that would collide
with img2dataset's own ``width``/``height`` (the resized size). They are spelled
here once, next to the stage-1 names from pipeline.schema that travel unchanged.
"""

from __future__ import annotations

from zhclip.pipeline.core import schema as S

# The names themselves live in pipeline.schema; re-exported for stage 2's modules.
STATUS = S.STATUS
ERROR_MESSAGE = S.ERROR_MESSAGE
RESIZED_WIDTH = S.WIDTH  # img2dataset writes the stored (resized) size as width/height
RESIZED_HEIGHT = S.HEIGHT
ORIGINAL_WIDTH = S.ORIGINAL_WIDTH
ORIGINAL_HEIGHT = S.ORIGINAL_HEIGHT
STATUS_SUCCESS = S.STATUS_SUCCESS
STATUS_FAILED_TO_DOWNLOAD = S.STATUS_FAILED_TO_DOWNLOAD
STATUS_FAILED_TO_RESIZE = S.STATUS_FAILED_TO_RESIZE
ERROR_CLASS = S.ERROR_CLASS
SOURCE_WIDTH = S.SOURCE_WIDTH
SOURCE_HEIGHT = S.SOURCE_HEIGHT
INTERNAL_KEY = S.INTERNAL_KEY

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
