"""bench/device.py --small: the one-call device benchmark runs on CPU and writes its JSON."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_small_device_bench_writes_every_figure(tmp_path):
    out = tmp_path / "tmp.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "device.py"), "--small", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["measured_on"] == "cpu" and result["small"] is True
    scoring, training = result["scoring"], result["training"]
    for value in (scoring["model_pairs_per_s"], scoring["step_pairs_per_s"], scoring["step_over_model"],
                  training["zhclip_stage1_samples_per_s"], training["zhclip_stage2_samples_per_s"],
                  training["open_clip_samples_per_s"], training["zhclip_over_open_clip"],
                  training["stage1_over_stage2"]):
        assert isinstance(value, float) and math.isfinite(value) and value > 0
    assert math.isclose(scoring["step_over_model"],
                        scoring["step_pairs_per_s"] / scoring["model_pairs_per_s"], rel_tol=1e-3)
    assert math.isclose(training["stage1_over_stage2"], training["zhclip_stage1_samples_per_s"]
                        / training["zhclip_stage2_samples_per_s"], rel_tol=1e-3)
    assert scoring["pairs"] == 64 and scoring["device_decode"] is False
    assert scoring["gpu_memory_gib"] is None and training["gpu_memory_gib"] is None
    # No device was used, so no goal may be claimed as met or missed.
    assert set(result["goals"].values()) == {None}


def test_full_size_run_refuses_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        return
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "device.py"), "--out",
                           str(tmp_path / "x.json")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--small" in proc.stderr
    assert not (tmp_path / "x.json").exists()


def _device_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("zhclip_bench_device", REPO / "bench" / "device.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_failing_part_is_recorded_and_the_other_still_runs(tmp_path, monkeypatch):
    """The device run is one call on a lent GPU: a crash in scoring (say the nvJPEG path)
    must leave the training figures and the error in the JSON, and a non-zero exit."""
    device = _device_module()

    def broken(*_):
        raise RuntimeError("nvjpeg exploded")

    monkeypatch.setattr(device, "bench_scoring", broken)
    out = tmp_path / "partial.json"
    assert device.main(["--small", "--out", str(out)]) == 1
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["scoring"]["error"] == "RuntimeError: nvjpeg exploded"
    assert any("nvjpeg exploded" in line for line in result["scoring"]["traceback"])
    training = result["training"]
    assert "error" not in training, training
    assert training["zhclip_over_open_clip"] > 0 and math.isfinite(training["stage1_over_stage2"])
    assert set(result["goals"].values()) == {None}
