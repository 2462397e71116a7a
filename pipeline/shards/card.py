"""The Hugging Face dataset card (OUT/dataset/README.md) of a final dataset.

``datasets.load_dataset(OUT/dataset)`` reads a folder's README.md front matter
before guessing: ``configs`` says which files make which split (without it the
parquet sidecars win and the images are lost) and ``dataset_info.features``
types every column, so the webdataset builder does not infer types from the
first five samples (a first sample with a null ``caption_orig`` or ``score``
would otherwise type the column as null and fail on the first real value).

The card is a function of the manifest alone, so reruns write identical bytes.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
from zhclip.pipeline.core import paths
from zhclip.pipeline.core import schema as S

CARD_NAME = "README.md"
# Columns the webdataset builder adds to every sample.
WDS_KEY = "__key__"
WDS_URL = "__url__"


def hf_dtype(arrow_type: pa.DataType) -> str:
    """The ``datasets.Value`` dtype name of a DATASET_SCHEMA column."""
    if pa.types.is_floating(arrow_type):
        return "float64"
    if pa.types.is_integer(arrow_type):
        return "int64"
    if pa.types.is_string(arrow_type):
        return "string"
    raise ValueError(f"no dataset-card dtype for {arrow_type}")


def json_fields() -> list[tuple[str, str]]:
    """(name, dtype) of the json member, in DATASET_SCHEMA order (the caption is the txt member)."""
    return [(f.name, hf_dtype(f.type)) for f in S.DATASET_SCHEMA if f.name != S.CAPTION]


def _q(text: str) -> str:
    """A YAML scalar that stays a string whatever it holds (JSON strings are valid YAML)."""
    return json.dumps(text, ensure_ascii=False)


def front_matter(splits: dict[str, int]) -> str:
    """The YAML front matter: one webdataset config, a split per folder, typed features."""
    lines = ["---", "configs:", "- config_name: default", "  data_files:"]
    for split in splits:
        lines += [f"  - split: {split}", f"    path: {_q(f'{split}/{split}-*.tar')}"]
    lines += ["dataset_info:", "  config_name: default", "  features:",
              f"  - name: {S.MEMBER_IMAGE}", "    dtype: image",
              f"  - name: {S.MEMBER_TEXT}", "    dtype: string",
              f"  - name: {S.MEMBER_JSON}", "    struct:"]
    for name, dtype in json_fields():
        lines += [f"    - name: {name}", f"      dtype: {dtype}"]
    lines += [f"  - name: {WDS_KEY}", "    dtype: string",
              f"  - name: {WDS_URL}", "    dtype: string", "  splits:"]
    for split, n in splits.items():
        lines += [f"  - name: {split}", f"    num_examples: {n}"]
    lines += ["task_categories:", "- zero-shot-image-classification", "language:", "- zh",
              "tags:", "- webdataset", "- zhclip", "---"]
    return "\n".join(lines) + "\n"


def card_text(manifest: dict[str, Any]) -> str:
    """Front matter plus a short human description of ``manifest``'s dataset."""
    splits = {sp: v["samples"] for sp, v in sorted(manifest["splits"].items())}
    body = ["", "# zhclip Chinese image-text dataset", "",
            "Written by `zhclip score`. Each split folder holds webdataset tars "
            f"(`{{key}}.{S.MEMBER_IMAGE}`, `{{key}}.{S.MEMBER_TEXT}`, `{{key}}.{S.MEMBER_JSON}`), "
            "one parquet sidecar per tar with the same rows, and `sizes.json`; "
            "`manifest.json` lists every file with its sha256.", "",
            "| split | shards | samples |", "|---|---|---|"]
    for sp, v in sorted(manifest["splits"].items()):
        body.append(f"| {sp} | {v['shards']} | {v['samples']} |")
    body += ["", "```python", "import datasets", "ds = datasets.load_dataset(\"path/to/dataset\")",
             "```", ""]
    return front_matter(splits) + "\n".join(body)


def write_card(folder: str, manifest: dict[str, Any]) -> None:
    paths.write_bytes_atomic(paths.join(folder, CARD_NAME), card_text(manifest).encode("utf-8"))
