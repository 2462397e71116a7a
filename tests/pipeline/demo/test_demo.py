"""`zhclip demo` (what `make demo` runs): the whole pipeline and the tiny training, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]

# Every reason the sample is built to trigger, by the report that counts it.
EXPECTED = {
    "metadata": {"caption_too_short", "caption_too_long", "duplicate_url", "invalid_url", "private_address",
                 "not_zh", "test_split", "malformed_row", "invalid_utf8", "untranslated"},
    "score": {"low_similarity"},
}


@pytest.mark.slow
def test_demo_end_to_end_and_rerun(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "zhclip.pipeline.cli", "demo", "--output", str(out), "--train-steps", "150"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    for title in ("stage 1 (metadata) funnel", "stage 3 (score) funnel", "samples by source",
                  "validation mean recall before training", "funnel.png", "index.html"):
        assert title in text, title
    before = float(text.split("recall before training:")[1].split()[0])
    after = float(text.split("recall after training:")[1].split()[0])
    assert after > before
    for stage, reasons in EXPECTED.items():
        report = json.loads((out / "report" / f"{stage}.json").read_text())
        assert reasons <= set(report["total"]["reasons"]), reasons - set(report["total"]["reasons"])
    meta = json.loads((out / "report" / "metadata.json").read_text())
    assert {r.split(":")[1] for r in meta["total"]["reasons"] if r.startswith("blacklist:")} == {
        "advertising", "filenames", "watermark", "contact"}
    down = json.loads((out / "report" / "download.json").read_text())
    assert down["download"]["by_status"]["failed_to_download"] and down["download"]["by_status"]["failed_to_resize"]
    manifest = json.loads((out / "dataset" / "manifest.json").read_text())
    assert len(manifest["shards"]) >= 2
    assert (out / "report" / "funnel.png").stat().st_size > 0
    assert (out / "browse" / "index.html").is_file()
    assert (out / "train" / "export.pt").is_file()
    first = _corpus(out)
    # Running it again is safe and gives the same corpus (the URLs differ: a new port).
    proc = subprocess.run(cmd[:-1] + ["0"], capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _corpus(out) == first


def _corpus(out: Path) -> list[tuple]:
    from zhclip.pipeline.core import schema as S
    from zhclip.pipeline.shards import format as SH

    t = SH.read_dataset_table(str(out / "dataset"))
    cols = [S.KEY, S.SOURCE, S.CAPTION, S.SHA256, S.SCORE]
    return sorted(zip(*(t.column(c).to_pylist() for c in cols), strict=True))
