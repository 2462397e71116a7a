"""`zhclip run` on Beam's SDK-harness workers from an external worker pool.

Dataflow (runner v2) runs DoFns in SDK-harness processes that receive them
pickled; Beam ships the same harness as `worker_pool_main`. The pool runs from
its own folder and HOME, so a DoFn that leans on the driver's working folder,
module state or files shows up. Every output file must match the in-process run
byte for byte: URL shards, rejects (stage 2's included), final tars, parquets.

1. Beam's PortableRunner with its embedded job service (one SDK worker per job).
2. Closer to a cluster: three SDK workers per stage at once (zhclip's local
   runner driving the pool, core/runner.py), sources and OUT on gs:// through
   the storage emulator.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from .cluster_runs import file_bytes, gs_config, run_twice, upload_folder

# Outputs that must not depend on the runner (reports carry timings and the config).
COMPARED = (
    "metadata/*.parquet",
    "rejects/*.parquet",
    "dataset/*/*.tar",
    "dataset/*/*.parquet",
    "dataset/*/sizes.json",
)
STAGES = 3


def pool_flags(pool_port: int) -> list[str]:
    return ["--environment_type", "EXTERNAL", "--environment_config", f"127.0.0.1:{pool_port}"]


def digests(root: str) -> dict[str, str]:
    return {
        name: hashlib.sha256(data).hexdigest()
        for name, data in file_bytes(root).items()
        if any(re.fullmatch(p.replace("*", "[^/]*"), name) for p in COMPARED)
    }


def compare(tmp_path: Path, second, flags: list[str]) -> tuple[dict, dict]:
    """Digests of the in-process run and of the run under test."""
    reference, other, _ = run_twice(tmp_path, second, flags)
    expected, got = digests(reference), digests(other)
    assert any(name.endswith(".tar") for name in expected)
    assert any(name.startswith("rejects/download") for name in expected)
    return expected, got


@pytest.mark.slow
def test_portable_runner_on_a_worker_pool_matches_the_in_process_run(tmp_path: Path, worker_pool):
    def local_output(cfg, _sample):
        cfg = dict(cfg, output=str(tmp_path / "portable"))
        return cfg, cfg["output"]

    flags = ["--runner", "PortableRunner", "--job_endpoint", "embed", *pool_flags(worker_pool.port)]
    expected, got = compare(tmp_path, local_output, flags)
    assert worker_pool.workers_started() >= STAGES  # the DoFns ran in the pool's workers
    assert sorted(got) == sorted(expected)
    assert {name for name in expected if got[name] != expected[name]} == set()


@pytest.mark.slow
def test_three_pool_workers_with_everything_on_gcs_match_the_in_process_run(
    tmp_path: Path, worker_pool, gcs_bucket: str
):
    def gcs_output(cfg, sample):
        upload_folder(sample, f"gs://{gcs_bucket}/sample")
        return gs_config(cfg, sample, gcs_bucket, "cluster"), f"gs://{gcs_bucket}/cluster"

    flags = [*pool_flags(worker_pool.port), "--direct_num_workers", "3"]
    expected, got = compare(tmp_path, gcs_output, flags)
    assert worker_pool.workers_started() == 3 * STAGES
    assert sorted(got) == sorted(expected)
    assert {name for name in expected if got[name] != expected[name]} == set()
