"""core/paths.py on gs:// against gcp-storage-emulator: globs, atomic writes, clear errors.

Before, pyarrow's C++ GCS client ignored STORAGE_EMULATOR_HOST and asked the
real service for OAuth credentials, so the first glob of a gs:// source failed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from zhclip.pipeline.core import paths


def test_globs_writes_and_listing_go_to_the_emulator(gcs_bucket: str):
    root = f"gs://{gcs_bucket}/src"
    for name in ("a/1.jsonl", "a/2.jsonl", "b/3.csv"):
        paths.write_bytes_atomic(f"{root}/{name}", name.encode())
    assert paths.expand_paths([f"{root}/a/*.jsonl"]) == [f"{root}/a/1.jsonl", f"{root}/a/2.jsonl"]
    assert paths.expand_paths([f"{root}/**/*.csv"]) == [f"{root}/b/3.csv"]
    assert paths.expand_paths([f"{root}/b/3.csv"]) == [f"{root}/b/3.csv"]
    assert paths.read_text(f"{root}/a/2.jsonl") == "a/2.jsonl"

    table = pa.table({"x": list(range(5))})
    paths.write_parquet_atomic(table, f"{root}/t/part.parquet")
    with paths.open_input(f"{root}/t/part.parquet") as f:
        assert pq.read_table(f).equals(table)
    # Only the final name is left: the temporary one was renamed away.
    assert paths.list_files(f"{root}/t") == [f"{root}/t/part.parquet"]
    paths.remove(f"{root}/t/part.parquet")
    assert not paths.exists(f"{root}/t/part.parquet")


def test_nothing_matching_and_a_missing_bucket_say_so_in_one_line(gcs_bucket: str):
    with pytest.raises(FileNotFoundError, match="no input matches"):
        paths.expand_paths([f"gs://{gcs_bucket}/empty/*.parquet"])
    with pytest.raises(FileNotFoundError, match="no input matches"):
        paths.expand_paths([f"gs://{gcs_bucket}/absent.csv"])
    with pytest.raises(FileNotFoundError, match="bucket gs://no-such-bucket-zh does not exist"):
        paths.expand_paths(["gs://no-such-bucket-zh/x.csv"])
    with pytest.raises(FileNotFoundError, match="bucket gs://no-such-bucket-zh does not exist"):
        paths.makedirs("gs://no-such-bucket-zh/run")


def test_metadata_command_prints_one_line_for_a_missing_output_bucket(
    gcs_bucket: str, tmp_path: Path
):
    paths.write_bytes_atomic(
        f"gs://{gcs_bucket}/in.jsonl",
        '{"link": "https://example.com/a.jpg", "text": "一只猫在草地上"}'.encode(),
    )
    cfg = {
        "output": "gs://missing-out-bucket/run",
        "sources": [
            {
                "name": "mine",
                "kind": "generic",
                "paths": [f"gs://{gcs_bucket}/in.jsonl"],
                "columns": {"url": "link", "caption": "text"},
            }
        ],
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "zhclip.pipeline.cli",
            "metadata",
            "--config",
            str(tmp_path / "c.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("zhclip")]
    assert errors == [
        "zhclip metadata: error: gs://missing-out-bucket/run: bucket "
        "gs://missing-out-bucket does not exist (create it, or fix the path)"
    ]
    assert "Traceback" not in proc.stderr


def test_shards_verify_names_a_missing_gcs_folder_in_one_line(gcs_bucket: str):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "zhclip.pipeline.cli",
            "shards",
            "verify",
            f"gs://{gcs_bucket}/no-run/dataset",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (
        f"zhclip shards verify: error: gs://{gcs_bucket}/no-run/dataset: no such folder"
    )
    assert "Traceback" not in proc.stderr
