"""`zhclip shards browse OUT --rejects`: one page per reason, from a real stage-3 run
plus a stage-1 reject file, checked as text and in headless Chromium."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image
from zhclip.pipeline.cli import main as zhclip
from zhclip.pipeline.core import reasons as RS
from zhclip.pipeline.core.config import config_from_dict
from zhclip.pipeline.demo.synthetic import Row, make_jpeg, write_download_shard
from zhclip.pipeline.inspect.browse_rejects import reason_page
from zhclip.pipeline.score.job import run_score
from zhclip.pipeline.shards import format as SH

from tests.pipeline.inspect.test_shards_browse import _chromium, page_result, run_chromium

HOSTILE = '<script>alert(1)</script> 领取\u202e优惠券 & "引号"'


def _flat() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (96, 96), (30, 160, 60)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rejects")
    same = make_jpeg(7, size=96)
    rows = [Row(f"wukong_{i:02d}", image=make_jpeg(100 + i, size=96)) for i in range(4)]
    rows += [Row(f"wukong_d{i}", image=same) for i in range(3)]  # two lose as duplicate_image
    rows += [Row(f"wukong_z{i}", image=_flat()) for i in range(2)]  # blank_image
    rows.append(Row("wukong_bad", image=b"<html>not an image</html>"))  # decode_error
    write_download_shard(root / SH.DOWNLOADS_DIR, "00000", rows, seed=4)
    cfg = config_from_dict(
        {
            "output": str(root),
            "score": {"backend": "precomputed"},
            "sources": [{"name": "wukong", "kind": "wukong", "paths": ["x"]}],
            "shards": {"samples_per_shard": 8, "val_fraction": 0.0},
        }
    )
    run_score(cfg, [])
    stage1 = RS.reject_table(
        ["wukong_m1", "wukong_m2"],
        ["wukong", "wukong"],
        ["javascript:alert(1)", "https://example.com/a?b=1&c=<2>"],
        [HOSTILE, "扫码领取优惠券"],
        [RS.blacklist_reason("advertising", "优惠券")] * 2,
        "metadata",
        matched=["优惠券", "<优惠券>"],
    )
    pq.write_table(stage1, root / "rejects" / "metadata-00000.parquet")
    return root


def _browse(out: Path, dest: Path, *extra: str) -> int:
    return zhclip(["shards", "browse", str(out), "--rejects", "--out", str(dest), *extra])


def test_a_page_per_reason_with_counts_and_a_fixed_sample(out, tmp_path):
    assert _browse(out, tmp_path / "a") == 0
    index = (tmp_path / "a" / "index.html").read_text()
    for reason, n in (
        (RS.REASON_DUPLICATE_IMAGE, 2),
        (RS.REASON_BLANK_IMAGE, 2),
        (RS.REASON_DECODE_ERROR, 1),
    ):
        assert re.search(
            rf'href="{re.escape(reason_page(reason))}">{reason}</a></td><td class="n">{n}<', index
        )
        assert (tmp_path / "a" / reason_page(reason)).is_file()
    blacklist = (tmp_path / "a" / reason_page("blacklist:advertising:优惠券")).read_text()
    assert "2 rows rejected" in blacklist and "matched: &lt;优惠券&gt;" in blacklist
    # a smaller sample is the first rows of the larger one, and reruns give the same bytes
    assert _browse(out, tmp_path / "b", "--per-reason", "1") == 0
    assert _browse(out, tmp_path / "c", "--per-reason", "1") == 0
    page = reason_page(RS.REASON_DUPLICATE_IMAGE)
    one = (tmp_path / "b" / page).read_text()
    assert one == (tmp_path / "c" / page).read_text() and one.count('class="card"') == 1
    first_key = re.search(r'data-key="([^"]+)"', one).group(1)
    assert (
        re.search(r'data-key="([^"]+)"', (tmp_path / "a" / page).read_text()).group(1) == first_key
    )


def test_web_text_is_escaped_and_only_http_urls_are_links(out, tmp_path):
    assert _browse(out, tmp_path / "a") == 0
    page = (tmp_path / "a" / reason_page("blacklist:advertising:优惠券")).read_text()
    assert (
        "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    )
    assert "\u202e" not in page and "\\u202e" in page  # the bidi override is shown, not obeyed
    assert 'href="javascript:' not in page and "javascript:alert(1)" in page
    assert 'href="https://example.com/a?b=1&amp;c=&lt;2&gt;"' in page


def test_stage3_thumbnails_load_in_chromium_and_the_report_links_the_browser(out, tmp_path):
    chromium = _chromium()
    dest = out / "report" / "rejects"
    assert zhclip(["shards", "browse", str(out), "--rejects"]) == 0  # default: OUT/report/rejects
    page = dest / reason_page(RS.REASON_BLANK_IMAGE)
    assert page_result(chromium, tmp_path, page) == {"loaded": 2, "total": 2, "failed": []}
    decode = page_result(chromium, tmp_path, dest / reason_page(RS.REASON_DECODE_ERROR))
    assert decode == {"loaded": 0, "total": 0, "failed": []}  # no thumbnail of undecodable bytes
    shot = tmp_path / "dup.png"
    run_chromium(
        chromium,
        tmp_path,
        f"--screenshot={shot}",
        "--window-size=1000,700",
        (dest / reason_page(RS.REASON_DUPLICATE_IMAGE)).as_uri(),
    )
    with Image.open(shot) as img:
        assert img.size == (1000, 700) and len(img.convert("RGB").getcolors(maxcolors=1 << 20)) > 50
    assert zhclip(["shards", "report", str(out)]) == 0
    summary = (out / "report" / "summary.html").read_text()
    assert 'href="rejects/index.html"' in summary
    assert 'href="../summary.html"' in (dest / "index.html").read_text()
    assert json.loads((out / "report" / "score.json").read_text())["total"]["balanced"]


def test_an_output_root_without_rejects_is_one_line(tmp_path, capsys):
    assert _browse(tmp_path, tmp_path / "x") != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no rejects/*.parquet rows" in err[0]
