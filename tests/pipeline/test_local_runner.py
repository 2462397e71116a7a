"""A default run names its local runner: no Prism, no download, no outbound connection.

Beam 2.77's default (SwitchingDirectRunner) first tries Prism, a binary it
downloads from GitHub at run time. zhclip passes the FnApiRunner itself when the
user names no runner (pipeline/core/runner.py). The check runs `zhclip metadata`
in a child process whose proxy variables point at a loopback listener that
records every connection, with an audit hook recording every socket.connect and
Beam's Prism entry points wrapped to record a call. The same harness with
``--runner DirectRunner`` shows the recorder does see Beam's Prism attempt.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from zhclip.pipeline.core.runner import LOCAL_RUNNER, make_pipeline

# Runs in the child: records, then hands over to the zhclip CLI.
DRIVER = r"""
import json, sys
record = {"connects": [], "prism": []}
def hook(event, args):
    if event == "socket.connect" and isinstance(args[1], tuple):
        record["connects"].append(repr(args[1]))
sys.addaudithook(hook)
from apache_beam.runners.portability import prism_runner
def wrap(owner, name):
    original = getattr(owner, name)
    def called(*a, **k):
        record["prism"].append(name)
        return original(*a, **k)
    setattr(owner, name, staticmethod(called) if name.startswith("_download") else called)
wrap(prism_runner.PrismJobServer, "_download_to_local_path")
wrap(prism_runner.PrismRunner, "run_pipeline")
from zhclip.pipeline.cli import main
try:
    rc = main(sys.argv[2:])
finally:
    with open(sys.argv[1], "w") as f:
        json.dump(record, f)
sys.exit(rc)
"""


class RecordingProxy:
    """A loopback TCP listener that counts the connections made to it, then closes them."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.peers: list[tuple[str, int]] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.peers.append(peer)
            conn.close()

    def close(self) -> None:
        self.sock.close()


def _tiny_config(tmp: Path) -> Path:
    rows = [
        {"link": f"https://example.com/{i}.jpg", "text": f"一只可爱的小猫在草地上玩耍{i}"}
        for i in range(8)
    ]
    (tmp / "pairs.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    cfg = {
        "output": str(tmp / "out"),
        "sources": [
            {
                "name": "mine",
                "kind": "generic",
                "paths": [str(tmp / "pairs.jsonl")],
                "columns": {"url": "link", "caption": "text"},
            }
        ],
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return path


def _run_recorded(
    tmp: Path, extra: list[str]
) -> tuple[int, dict, list, subprocess.CompletedProcess]:
    proxy = RecordingProxy()
    env = dict(os.environ)
    url = f"http://127.0.0.1:{proxy.port}"
    env.update(
        {
            "HTTP_PROXY": url,
            "HTTPS_PROXY": url,
            "http_proxy": url,
            "https_proxy": url,
            "ALL_PROXY": url,
            "NO_PROXY": "",
            "no_proxy": "",
            "HOME": str(tmp / "home"),
        }
    )  # no cached Prism binary to find
    record_file = tmp / "record.json"
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                DRIVER,
                str(record_file),
                "metadata",
                "--config",
                str(_tiny_config(tmp)),
                "--quiet",
                *extra,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        proxy.close()
    return proc.returncode, json.loads(record_file.read_text()), proxy.peers, proc


def test_default_metadata_run_makes_no_connection_and_never_touches_prism(tmp_path: Path):
    rc, record, peers, proc = _run_recorded(tmp_path, [])
    assert rc == 0, proc.stderr[-2000:]
    assert record["prism"] == []
    assert record["connects"] == []
    assert peers == []
    assert len(list((tmp_path / "out" / "metadata").glob("*.parquet"))) >= 1


@pytest.mark.slow
def test_the_recorder_sees_beams_own_default_reach_for_prism(tmp_path: Path):
    # Beam's DirectRunner (what a run without zhclip's choice gets) tries Prism first:
    # the harness must notice, or the test above proves nothing.
    rc, record, peers, proc = _run_recorded(tmp_path, ["--runner", "DirectRunner"])
    assert rc == 0, proc.stderr[-2000:]  # Beam falls back to the FnApiRunner offline
    assert "run_pipeline" in record["prism"]
    assert record["connects"] or peers


def test_explicit_runner_is_left_to_beam_and_default_honours_direct_options():
    pipeline = make_pipeline(
        ["--direct_num_workers", "2", "--direct_running_mode", "multi_threading"]
    )
    assert type(pipeline.runner).__name__ == "FnApiRunner"
    assert pipeline.options.get_all_options()["runner"] == LOCAL_RUNNER
    assert pipeline.options.get_all_options()["direct_num_workers"] == 2
    assert type(make_pipeline(["--runner", "PrismRunner"]).runner).__name__ == "PrismRunner"
