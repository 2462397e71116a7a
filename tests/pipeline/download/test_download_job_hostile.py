"""`zhclip download` as a real Beam job on hostile URL lists: it finishes, every row is
accounted, and no URL holds a worker past the deadline or grows memory past the cap.

Also: stage 2 reads only the URL shards a finished stage 1 committed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.core import stage_marker
from zhclip.pipeline.core.config import ConfigError, config_from_dict
from zhclip.pipeline.demo.imageserver import ImageServer
from zhclip.pipeline.download.columns import STATUS, STATUS_SUCCESS
from zhclip.pipeline.download.fetch import MAX_RESPONSE_BYTES
from zhclip.pipeline.download.job import list_url_shards, run_download
from zhclip.pipeline.metadata.job import run_metadata

HERE = Path(__file__).resolve().parent
MALFORMED = ["http://[1.2.3.4]/a.jpg", "http://a\uff03@127.0.0.1/a.jpg", "http://[::1/a.jpg",
             "http://x.example:99999/a.jpg", "http:///a.jpg", "http://exa mple.com/a.jpg",
             "javascript:alert(1)", "ftp://127.0.0.1/a.jpg", "", None, "not a url",
             "http://例子..测试/a.jpg", "http://" + "a" * 300 + ".com/"]
HOSTILE_ADDRESSES = ["http://10.0.0.1/a.jpg", "http://169.254.169.254/latest/meta-data/",
                     "http://[2002:7f00:1::1]/a.jpg", "http://[::ffff:10.0.0.1]/a.jpg",
                     "http://0x7f.1/a.jpg"]


def write_url_shard(out: Path, shard: str, urls: list[str | None]) -> Path:
    rows = [{S.KEY: f"wukong:{shard}:{i}", S.URL: u, S.CAPTION: f"第{i}张图片", S.SOURCE: "wukong"}
            for i, u in enumerate(urls)]
    path = out / "metadata" / f"{shard}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(S.conform(pa.Table.from_pylist(rows), S.METADATA_SCHEMA), path)
    return path


def cfg_for(out: Path, allow=("127.0.0.0/8",)):
    return config_from_dict({
        "output": str(out),
        "filters": {"urls": {"allow_networks": list(allow)}},
        "download": {"timeout": 0.5, "deadline": 1.0, "retries": 0, "thread_count": 4,
                     "image_size": 32},
    })


def all_rows_accounted(out: Path, keys: list[str], report: dict) -> None:
    assert report["total"]["balanced"], report["total"]
    assert report["total"]["rows_in"] == len(keys)
    table = pq.read_table(out / "downloads" / "00000.parquet")
    ok = {k for k, s in zip(table[S.KEY].to_pylist(), table[STATUS].to_pylist(), strict=True)
          if s == STATUS_SUCCESS}
    rejected = pq.read_table(out / "rejects" / "download-00000.parquet")[S.KEY].to_pylist()
    # Each key exactly once: kept, or rejected with a reason.
    assert len(rejected) == len(set(rejected)) and ok.isdisjoint(rejected)
    assert ok | set(rejected) == set(keys)


# --- the hostile-response set, measured ---------------------------------------------------


def test_download_job_on_the_hostile_set_is_bounded_in_time_and_memory(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(HERE / "hostile_job.py"), str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(done.stdout.strip().splitlines()[-1])
    print("hostile job:", {k: r[k] for k in ("rss_baseline_mb", "rss_peak_mb",
                                             "longest_url_seconds", "wall_seconds")})
    assert r["accounting_ok"] and r["total"]["rows_in"] == r["rows"] == len(r["classes"])
    for key, expected in r["expected"].items():
        assert r["classes"][key] == expected, (key, r["classes"][key])
    assert all(r["classes"][k] is None for k in r["classes"] if k.startswith("good:"))
    assert all(r["classes"][k] for k in r["classes"] if k.startswith("poison:"))
    assert set(r["rejected_keys"]) == {k for k, c in r["classes"].items() if c}
    # download.deadline is 3 s: the drips (2 minutes each) are cut there.
    assert r["longest_url_seconds"] < 3.5
    # Beyond the baseline run, the hostile set costs at most the body cap (64 MiB
    # of the chunked response) plus slack; the bombs and the 80 MiB body cost nothing more.
    assert r["rss_peak_mb"] - r["rss_baseline_mb"] < MAX_RESPONSE_BYTES / 2**20 + 48


# --- property: any list of valid, malformed and hostile URLs is fully accounted -----------


@pytest.fixture(scope="module")
def server():
    with ImageServer(slow_seconds=5.0, drip_interval=0.2, drip_bytes=100,
                     chunked_bytes=4 << 20) as srv:
        yield srv


def url_strategy(server):
    valid = [server.image_url(f"v{i}", fmt) for i, fmt in enumerate(("jpg", "png", "webp"))]
    responses = [server.fault_url(k) for k in ("http_404", "truncated_jpeg", "html_body",
                                               "redirect_private", "redirect_loop")]
    responses += [server.hostile_url(k) for k in ("drip_body", "jpeg_junk_before_sof",
                                                  "rle_bmp_bomb")]
    return st.lists(st.sampled_from(valid + responses + MALFORMED + HOSTILE_ADDRESSES),
                    min_size=1, max_size=8)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_download_finishes_with_every_row_accounted(server, tmp_path_factory, data):
    urls = data.draw(url_strategy(server))
    out = tmp_path_factory.mktemp("prop")
    write_url_shard(out, "00000", urls)
    keys = [f"wukong:00000:{i}" for i in range(len(urls))]
    report = run_download(cfg_for(out), [], progress=False, isolate=False)
    all_rows_accounted(out, keys, report)


# --- item 8: only committed stage-1 shards ---------------------------------------------------


def _stage1_cfg(tmp_path: Path, server) -> dict:
    src = tmp_path / "src.jsonl"
    src.write_text("".join(json.dumps({"link": server.image_url(f"s{i}"),
                                       "text": f"一只可爱的小猫在草地上玩耍{i}"}) + "\n"
                           for i in range(3)), encoding="utf-8")
    return {
        "output": str(tmp_path / "out"),
        "sources": [{"name": "mine", "kind": "generic", "paths": [str(src)],
                     "columns": {"url": "link", "caption": "text"}}],
        "filters": {"urls": {"allow_networks": ["127.0.0.0/8"]}},
        "download": {"timeout": 1.0, "retries": 0, "thread_count": 2, "image_size": 32},
    }


def test_stage1_commits_its_shards_and_stage2_reads_only_those(tmp_path, server):
    cfg = config_from_dict(_stage1_cfg(tmp_path, server))
    run_metadata(cfg, [])
    folder = Path(cfg.output) / "metadata"
    committed = stage_marker.committed_shards(str(folder))
    assert committed is not None and sum(committed.rows.values()) == 3
    assert not (folder / stage_marker.STARTED_NAME).exists()
    # Leftovers a killed earlier run could leave beside them are not read.
    (folder / ".tmp-0123456789ab-00001-0000.parquet").write_bytes(b"half a parquet file")
    write_url_shard(Path(cfg.output), "99999-0000", ["http://10.0.0.1/stale.jpg"])
    assert [Path(p).name for p in list_url_shards(cfg.output)] == sorted(committed.rows)
    report = run_download(cfg, [], progress=False, isolate=False)
    assert report["total"]["rows_in"] == 3 and report["total"]["kept"] == 3


def test_stage2_refuses_the_shards_of_a_stage1_run_that_did_not_finish(tmp_path, server):
    cfg = config_from_dict(_stage1_cfg(tmp_path, server))
    run_metadata(cfg, [])
    folder = Path(cfg.output) / "metadata"
    stage_marker.mark_started(str(folder))  # as a rerun killed before it committed leaves it
    with pytest.raises(ConfigError, match="did not finish"):
        run_download(cfg, [], progress=False, isolate=False)
    (folder / stage_marker.STARTED_NAME).unlink()  # no marker at all: a hand-made folder
    assert len(list_url_shards(cfg.output)) == len(list(folder.glob("*.parquet"))) > 0


def test_a_shard_named_by_the_marker_but_gone_is_an_error(tmp_path, server):
    cfg = config_from_dict(_stage1_cfg(tmp_path, server))
    run_metadata(cfg, [])
    for shard in (Path(cfg.output) / "metadata").glob("*.parquet"):
        shard.unlink()
    with pytest.raises(ConfigError, match="missing"):
        list_url_shards(cfg.output)
