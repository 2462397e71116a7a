"""The reject-reason vocabulary of every stage, and the one reject-table builder.

A reject reason is a short fixed word (``caption_too_short``), or a prefix and a
name (``blacklist:<list>:<name>``, ``download:<error class>``). Every module that
rejects a row takes its reason from here, so the funnel report, the README table
and the rejects parquet speak one vocabulary.
"""

from __future__ import annotations

import pyarrow as pa
from zhclip.pipeline.core.schema import REJECT_SCHEMA

# Stage 1 and 3 reasons. Blacklist reasons are built as
# ``blacklist:<list>:<term>`` and download ones as ``download:<error class>``.
REASON_CAPTION_TOO_SHORT = "caption_too_short"
REASON_CAPTION_TOO_LONG = "caption_too_long"
REASON_EMPTY_CAPTION = "empty_caption"
REASON_DUPLICATE_URL = "duplicate_url"
REASON_DUPLICATE_KEY = "duplicate_key"
REASON_INVALID_URL = "invalid_url"
REASON_PRIVATE_ADDRESS = "private_address"
REASON_NOT_ZH = "not_zh"
REASON_TEST_SPLIT = "test_split"
REASON_MALFORMED_ROW = "malformed_row"
REASON_MALFORMED_FILE = "malformed_file"
# A caption (or URL) value that is not text: bytes that are not UTF-8, a struct, a list.
REASON_INVALID_CAPTION = "invalid_caption"
REASON_UNTRANSLATED = "untranslated"
REASON_LOW_SIMILARITY = "low_similarity"
REASON_DECODE_ERROR = "decode_error"
REASON_MISSING_MEMBER = "missing_member"
REASON_DUPLICATE_IMAGE = "duplicate_image"
REASON_TEST_OVERLAP = "test_overlap"
REASON_MERGED_REGION = "merged_region"  # a VG region phrase joined into its image's one pair
REASON_NOT_CHINESE = "not_chinese"
REASON_UNSAFE = "unsafe"
REASON_WATERMARK = "watermark"
REASON_NEAR_DUPLICATE_IMAGE = "near_duplicate_image"
# A flat or near-flat picture (solid colour, placeholder): too little structure to hash.
REASON_BLANK_IMAGE = "blank_image"
# score.safety: NudeNet found a configured class at the threshold (classes in matched).
REASON_UNSAFE_IMAGE = "unsafe_image"
REASON_BAD_REGION = "bad_region"  # a region box that leaves no pixels in the downloaded image
BLACKLIST_PREFIX = "blacklist"
DOWNLOAD_PREFIX = "download"


def blacklist_reason(list_name: str, term: str) -> str:
    """Reject reason for a caption that hit ``term`` of ``list_name``."""
    return f"{BLACKLIST_PREFIX}:{list_name}:{term}"



def download_reason(error_class: str) -> str:
    """Reject reason of a row whose download failed with ``error_class``."""
    return f"{DOWNLOAD_PREFIX}:{error_class}"


# --- stage 2: download error classes (error_class column, download:<class>) ---
# Download-time classes (status failed_to_download).
TIMEOUT = "timeout"
HTTP_3XX = "http_3xx"
HTTP_4XX = "http_4xx"
HTTP_5XX = "http_5xx"
REDIRECT_LOOP = "redirect_loop"
DNS = "dns"
CONNECTION = "connection"
TLS = "tls"
DISALLOWED_BY_HEADER = "disallowed_by_header"
PRIVATE_ADDRESS = "private_address"
SCHEME_NOT_ALLOWED = "scheme_not_allowed"
INVALID_URL = "invalid_url"
RESPONSE_TOO_LARGE = "response_too_large"
HASH_MISMATCH = "hash_mismatch"
FILE_NOT_FOUND = "file_not_found"
# Content classes (usually status failed_to_resize).
EMPTY_BODY = "empty_body"
NOT_AN_IMAGE = "not_an_image"
TRUNCATED_IMAGE = "truncated_image"
INVALID_IMAGE = "invalid_image"
TOO_LARGE = "too_large"
TOO_SMALL = "too_small"
BAD_ASPECT_RATIO = "bad_aspect_ratio"
OTHER = "other"

KNOWN_CLASSES = frozenset(
    {
        TIMEOUT, HTTP_3XX, HTTP_4XX, HTTP_5XX, REDIRECT_LOOP, DNS, CONNECTION, TLS,
        DISALLOWED_BY_HEADER, PRIVATE_ADDRESS, SCHEME_NOT_ALLOWED, INVALID_URL,
        RESPONSE_TOO_LARGE, HASH_MISMATCH, FILE_NOT_FOUND, EMPTY_BODY, NOT_AN_IMAGE,
        TRUNCATED_IMAGE, INVALID_IMAGE, TOO_LARGE, TOO_SMALL, BAD_ASPECT_RATIO, OTHER,
    }
)


def tagged(cls: str, detail: str) -> str:
    """An error message that :func:`classify_error` reads back as ``cls``."""
    if cls not in KNOWN_CLASSES:
        raise ValueError(f"unknown download error class {cls!r}")
    return f"{cls}: {detail}"


def reject_table(
    keys, sources, urls, captions, reasons, stage: str, matched=None
) -> pa.Table:
    """Build a reject table from parallel lists or arrays (``matched``: null unless given)."""
    n = len(reasons)
    return pa.Table.from_arrays(
        [
            pa.array(keys, pa.string()),
            pa.array(sources, pa.string()),
            pa.array(urls, pa.string()),
            pa.array(captions, pa.string()),
            pa.array(reasons, pa.string()),
            pa.array([stage] * n, pa.string()),
            pa.array(matched if matched is not None else [None] * n, pa.string()),
        ],
        schema=REJECT_SCHEMA,
    )
