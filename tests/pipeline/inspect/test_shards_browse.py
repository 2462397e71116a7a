"""`zhclip shards browse`: the contact sheet, rendered in headless Chromium.

Each page's own script writes how many thumbnails the browser decoded
(naturalWidth > 0) into <pre id="result">; Chromium's --dump-dom hands the DOM
back after the load event, so the test reads what a real browser saw. A
corrupted thumbnail is the control that shows the check can fail.
Chromium is Debian's package; set-up installs it when missing (as root) and
the tests skip, saying why, only where that is impossible.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from zhclip.pipeline.cli import main as zhclip
from zhclip.pipeline.demo.damage import copy_folder, make_sample, rewrite_tar, write_dataset
from zhclip.pipeline.shards import writer as SW

CHROMIUM = "/usr/bin/chromium"
APT_INSTALL = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]


def _chromium() -> str:
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("chromium not installed, and apt-get as root is not available to install it")
    try:
        subprocess.run(["apt-get", "update"], capture_output=True, timeout=600, check=True)
        subprocess.run(APT_INSTALL, capture_output=True, timeout=900, check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    except (subprocess.SubprocessError, OSError) as err:
        pytest.skip(f"chromium could not be installed with {' '.join(APT_INSTALL)}: {err}")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{' '.join(APT_INSTALL)} finished but {CHROMIUM} is absent")
    return CHROMIUM


@pytest.fixture(scope="module")
def chromium() -> str:
    return _chromium()


def run_chromium(binary: str, tmp: Path, *args: str) -> str:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
           "--virtual-time-budget=10000", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def page_result(binary: str, tmp: Path, page: Path) -> dict:
    dom = run_chromium(binary, tmp, "--dump-dom", page.as_uri())
    match = re.search(r'<pre id="result">([^<]*)</pre>', dom)
    assert match, dom[-2000:]
    return json.loads(match.group(1))


@pytest.fixture(scope="module")
def browsed(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("browse")
    samples = write_dataset(base / "dataset")
    odd = make_sample(99)
    odd.caption = "<b>粗体</b> & \"引号\""
    info = SW.write_shard(str(base / "extra"), "train", 0, [odd])
    assert info.samples == 1
    out = base / "sheet"
    rc = zhclip(["shards", "browse", str(base / "dataset"), "--out", str(out), "--per-page", "5"])
    assert rc == 0
    return {"base": base, "out": out, "samples": samples}


def test_browse_writes_paginated_pages_and_thumbnails(browsed):
    out = browsed["out"]
    assert json.loads((out / "pages.json").read_text()) == ["index.html", "page-000002.html", "page-000003.html"]
    thumbs = sorted((out / "thumbs").iterdir())
    assert len(thumbs) == 13
    with Image.open(thumbs[0]) as img:
        assert img.format == "JPEG" and max(img.size) <= 160
    index = (out / "index.html").read_text()
    assert 'href="page-000002.html"' in index and "previous" not in index
    last = (out / "page-000003.html").read_text()
    assert 'href="page-000002.html"' in last and "next" not in last
    assert index.count('class="thumb"') == 5 and last.count('class="thumb"') == 3
    assert browsed["samples"][0].caption in index and browsed["samples"][12].key in last


def test_every_thumbnail_loads_in_chromium(browsed, chromium, tmp_path):
    out = browsed["out"]
    for page, n in (("index.html", 5), ("page-000002.html", 5), ("page-000003.html", 3)):
        result = page_result(chromium, tmp_path, out / page)
        assert result == {"loaded": n, "total": n, "failed": []}, page


def test_screenshot_is_written(browsed, chromium, tmp_path):
    shot = tmp_path / "index.png"
    run_chromium(chromium, tmp_path, f"--screenshot={shot}", "--window-size=1280,900",
                 (browsed["out"] / "index.html").as_uri())
    with Image.open(shot) as img:
        img.load()
        assert img.format == "PNG" and img.size == (1280, 900)
        assert len(img.convert("RGB").getcolors(maxcolors=1 << 20)) > 50  # thumbnails, not a blank page


def test_a_broken_thumbnail_is_caught(browsed, chromium, tmp_path):
    sheet = copy_folder(browsed["out"], tmp_path / "sheet")
    (sheet / "thumbs" / "000001.jpg").write_bytes(b"not an image")
    result = page_result(chromium, tmp_path, sheet / "index.html")
    assert result == {"loaded": 4, "total": 5, "failed": ["thumbs/000001.jpg"]}


def test_captions_are_escaped(browsed, chromium, tmp_path):
    out = tmp_path / "odd"
    assert zhclip(["shards", "browse", str(browsed["base"] / "extra"), "--out", str(out)]) == 0
    page = (out / "index.html").read_text()
    assert "&lt;b&gt;粗体&lt;/b&gt; &amp; &quot;引号&quot;" in page and "<b>粗体" not in page
    assert page_result(chromium, tmp_path, out / "index.html")["loaded"] == 1


def test_undecodable_image_gets_a_placeholder_and_exit_1(browsed, chromium, tmp_path, capsys):
    damaged = copy_folder(browsed["base"] / "dataset", tmp_path / "dataset")
    rewrite_tar(damaged / "train" / "train-000000.tar",
                lambda name, data: b"garbage" if name == "wukong_00001.jpg" else data)
    out = tmp_path / "sheet"
    rc = zhclip(["shards", "browse", str(damaged), "--out", str(out), "--per-page", "5"])
    err = capsys.readouterr().err
    assert rc == 1 and "wukong_00001: image does not decode" in err
    index = (out / "index.html").read_text()
    assert index.count('class="thumb"') == 4 and index.count('class="noimg"') == 1
    assert page_result(chromium, tmp_path, out / "index.html") == {"loaded": 4, "total": 4, "failed": []}


def test_limit_caps_the_samples(browsed, tmp_path):
    out = tmp_path / "sheet"
    assert zhclip(["shards", "browse", str(browsed["base"] / "dataset"), "--out", str(out), "--limit", "7",
                   "--per-page", "5"]) == 0
    assert json.loads((out / "pages.json").read_text()) == ["index.html", "page-000002.html"]
    assert len(list((out / "thumbs").iterdir())) == 7
