"""Fixtures for running the stages the way a cluster does: GCS through an emulator.

``gcs_emulator`` starts `gcp-storage-emulator` (the real server, a [dev]
dependency) on a free loopback port for the session and points Google's
storage clients at it with ``STORAGE_EMULATOR_HOST``, as its documentation
says; ``gcs_bucket`` makes a fresh bucket per test. Child processes (zhclip
commands, Beam workers) inherit the variables.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# gcsfs (fsspec's gs://) first asks GCS's gRPC storage-control service whether a
# bucket is hierarchical; the emulator serves only the JSON API, so each new
# client would wait 60 s for that probe. Its switch turns the probe off.
GCSFS_PROBE_SWITCH = "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout}s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory) -> Iterator[str]:
    """The emulator's URL; STORAGE_EMULATOR_HOST points at it for the session."""
    exe = shutil.which("gcp-storage-emulator", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("gcp-storage-emulator is not installed (pip install -e '.[dev]')")
    port = free_port()
    log = tmp_path_factory.mktemp("gcs") / "emulator.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [exe, "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory", "-q"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    wait_for_port(port, proc, "gcp-storage-emulator")
    url = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", GCSFS_PROBE_SWITCH)}
    os.environ["STORAGE_EMULATOR_HOST"] = url
    os.environ[GCSFS_PROBE_SWITCH] = "false"
    try:
        yield url
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        stop(proc)


@pytest.fixture
def gcs_bucket(gcs_emulator) -> str:
    """A new, empty bucket on the emulator; returns its name."""
    from google.cloud import storage

    name = f"zhclip-{uuid.uuid4().hex[:10]}"
    storage.Client(project="zhclip-test").create_bucket(name)
    return name


def start_worker_pool(cwd: Path, home: Path, log: Path) -> tuple[subprocess.Popen, int]:
    """Beam's SDK worker pool (the harness Dataflow runs in its containers), on loopback.

    It runs from ``cwd`` with ``HOME`` set to ``home``, neither of them the
    driver's, with the project's interpreter first on PATH (the pool starts its
    workers with whatever `python` PATH finds).
    """
    port = free_port()
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["HOME"] = str(home)
    home.mkdir(parents=True, exist_ok=True)
    cwd.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "apache_beam.runners.worker.worker_pool_main",
                f"--service_port={port}",
            ],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    wait_for_port(port, proc, "Beam worker pool")
    return proc, port


@dataclasses.dataclass
class WorkerPool:
    port: int
    log: Path

    def workers_started(self) -> int:
        """How many SDK workers the pool has started (it logs one line per worker)."""
        return self.log.read_text(errors="replace").count("Starting worker with command")


@pytest.fixture
def worker_pool(tmp_path_factory) -> Iterator[WorkerPool]:
    """A running worker pool, in its own folder and HOME; stopped after the test."""
    root = tmp_path_factory.mktemp("pool")
    proc, port = start_worker_pool(root / "cwd", root / "home", root / "pool.log")
    try:
        yield WorkerPool(port, root / "pool.log")
    finally:
        stop(proc)
