"""Stage 2 end to end: real Beam (DirectRunner), real img2dataset, real loopback server."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image
from zhclip.pipeline.core import reasons as RS
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.core.config import config_from_dict
from zhclip.pipeline.core.reasons import INVALID_URL, PRIVATE_ADDRESS, SCHEME_NOT_ALLOWED
from zhclip.pipeline.demo.imageserver import FAULTS, ImageServer, render_image
from zhclip.pipeline.download.columns import ERROR_CLASS, SOURCE_WIDTH, STATUS, STATUS_SUCCESS
from zhclip.pipeline.download.job import run_download
from zhclip.pipeline.download.shard import read_complete_outputs, read_shard_input, shard_files

REPO = Path(__file__).resolve().parents[3]
FIXTURE_JPEGS = Path("/work/shared/fixtures/img2dataset/resize_test_image")


# --- helpers -------------------------------------------------------------------------


def row(key: str, url: str | None, source: str = "laion_zh", **extra) -> dict:
    return {S.KEY: key, S.URL: url, S.CAPTION: f"一张图片 {key}", S.SOURCE: source, **extra}


def write_url_shard(out: Path, shard: str, rows: list[dict]) -> Path:
    """A stage-1 URL shard as stage 1 writes it (pipeline.schema.METADATA_SCHEMA)."""
    path = out / "metadata" / f"{shard}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    table = S.conform(pa.Table.from_pylist(rows), S.METADATA_SCHEMA)
    pq.write_table(table, path)
    return path


def make_cfg(out: Path, allow=("127.0.0.0/8",), schemes=("http", "https"), image_root=None, **download):
    settings = {"timeout": 0.5, "retries": 0, "thread_count": 4, "image_size": 32}
    settings.update(download)
    sources = [{"name": "coco_zh", "kind": "coco", "paths": ["unused.json"], "image_root": str(image_root)}]
    return config_from_dict(
        {
            "output": str(out),
            "filters": {"urls": {"schemes": list(schemes), "allow_networks": list(allow)}},
            "download": settings,
            **({"sources": sources} if image_root else {}),
        }
    )


def run(cfg, **kw) -> dict:
    return run_download(cfg, [], progress=False, **kw)


def parquet(out: Path, shard: str) -> pa.Table:
    return pq.read_table(shard_files(str(out), shard).parquet)


def by_key(table: pa.Table) -> dict[str, dict]:
    return {r[S.KEY]: r for r in table.to_pylist()}


def tar_samples(path: str) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for m in tar:
            base, ext = m.name.split(".", 1)
            assert ext not in samples.setdefault(base, {}), f"{m.name} twice"
            samples[base][ext] = tar.extractfile(m).read()
    return samples


def success_keys(out: Path) -> set[str]:
    keys = set()
    for p in (out / "downloads").glob("*.parquet"):
        t = pq.read_table(p)
        keys |= {k for k, s in zip(t[S.KEY].to_pylist(), t[STATUS].to_pylist(), strict=True)
                 if s == STATUS_SUCCESS}
    return keys


def assert_shard_consistent(out: Path, shard: str) -> pa.Table:
    """Outputs complete and agreeing: every success once in the tar, nothing else there."""
    files = shard_files(str(out), shard)
    shard_input = read_shard_input(str(out / "metadata" / f"{shard}.parquet"))
    table = read_complete_outputs(files, shard_input.digest)
    assert table is not None, f"shard {shard} outputs are not complete"
    keys = table[S.KEY].to_pylist()
    assert len(keys) == len(set(keys))
    ok = {k for k, s in zip(keys, table[STATUS].to_pylist(), strict=True) if s == STATUS_SUCCESS}
    samples = tar_samples(files.tar)
    assert set(samples) == ok
    assert all(set(parts) == {"jpg", "txt", "json"} for parts in samples.values())
    return table


@pytest.fixture(scope="module")
def server():
    with ImageServer(slow_seconds=2.0) as srv:
        yield srv


# --- every fault ends in its recorded reason, and the job completes ----------------------


@pytest.fixture(scope="module")
def fault_run(server, tmp_path_factory):
    out = tmp_path_factory.mktemp("faults")
    good_a = [row(f"laion_zh:{i}", server.image_url(f"a{i}", ("jpg", "png", "webp")[i % 3], 50, 40),
                  caption_orig=f"orig {i}", width=999, height=111) for i in range(9)]
    faults = [row(f"wukong:{kind}", server.fault_url(kind), source="wukong") for kind in FAULTS]
    write_url_shard(out, "00000", good_a + faults)
    good_b = [row(f"coco_zh:{i}", server.image_url(f"b{i}"), source="coco_zh") for i in range(4)]
    extra = [
        row("coco_zh:0", server.image_url("dup"), source="coco_zh"),  # repeated key
        row("coco_zh:file", (FIXTURE_JPEGS / "123_456.jpg").as_uri(), source="coco_zh"),
        row("coco_zh:nourl", None, source="coco_zh"),
    ]
    write_url_shard(out, "00001", good_b + extra)
    report = run(make_cfg(out))
    return out, report


def test_each_fault_ends_in_its_reason(fault_run):
    out, _ = fault_run
    rows = by_key(parquet(out, "00000"))
    for kind, fault in FAULTS.items():
        r = rows[f"wukong:{kind}"]
        if fault.expected_class is None:
            assert r[STATUS] == STATUS_SUCCESS, (kind, r["error_message"])
        else:
            assert r[STATUS] != STATUS_SUCCESS and r[ERROR_CLASS] == fault.expected_class, (
                kind, r[ERROR_CLASS], r["error_message"])
    rejects = by_key(pq.read_table(shard_files(str(out), "00000").rejects))
    for kind, fault in FAULTS.items():
        key = f"wukong:{kind}"
        if fault.expected_class is None:
            assert key not in rejects
        else:
            expected = (RS.REASON_PRIVATE_ADDRESS if fault.expected_class == PRIVATE_ADDRESS
                        else f"{RS.DOWNLOAD_PREFIX}:{fault.expected_class}")
            assert rejects[key][S.REASON] == expected
            assert rejects[key][S.STAGE] == "download"


def test_other_refusals_and_duplicates_are_recorded(fault_run):
    out, report = fault_run
    rows = by_key(parquet(out, "00001"))
    assert rows["coco_zh:file"][ERROR_CLASS] == SCHEME_NOT_ALLOWED  # file:// not listed
    assert rows["coco_zh:nourl"][ERROR_CLASS] == INVALID_URL
    rejects = pq.read_table(shard_files(str(out), "00001").rejects).to_pylist()
    dup = [r for r in rejects if r[S.REASON] == RS.REASON_DUPLICATE_KEY]
    assert [r[S.KEY] for r in dup] == ["coco_zh:0"]
    # the first coco_zh:0 row was downloaded, the repeat was not
    assert rows["coco_zh:0"][S.URL].endswith("/img/b0.jpg")
    assert report["shards"]["00001"]["rejected_before_download"] == {RS.REASON_DUPLICATE_KEY: 1}


def test_accounting_holds_per_shard_per_source_and_in_total(fault_run):
    out, report = fault_run
    total = report["total"]
    assert total["rows_in"] == 9 + len(FAULTS) + 7
    n_fail_faults = sum(1 for f in FAULTS.values() if f.expected_class)
    assert total["kept"] == 9 + (len(FAULTS) - n_fail_faults) + 4
    total = report["total"]
    assert total["balanced"] and total["rows_in"] == total["kept"] + total["rejected"]
    assert report["sources"]["laion_zh"] == {
        "rows_in": 9, "kept": 9, "rejected": 0, "balanced": True, "reasons": {}}
    wukong = report["sources"]["wukong"]
    assert sum(n for r, n in wukong["reasons"].items() if r.startswith("download:")) == n_fail_faults
    assert wukong["balanced"]
    assert all(s["accounting_ok"] for s in report["shards"].values())
    on_disk = json.loads((out / "report" / "download.json").read_text())
    assert on_disk["total"] == total
    # the classes the issue names show up in the report by name
    by_status = report["download"]["by_status"]
    classes = {**by_status["failed_to_download"], **by_status["failed_to_resize"]}
    for cls in ("timeout", "http_4xx", "http_5xx", "disallowed_by_header", "private_address",
                "too_large", "redirect_loop", "truncated_image", "not_an_image", "empty_body"):
        assert classes.get(cls, 0) >= 1, cls
        assert total["reasons"].get(f"download:{cls}", 0) == classes[cls], cls


def test_outputs_are_webdataset_with_stage1_columns(fault_run):
    out, _ = fault_run
    table = assert_shard_consistent(out, "00000")
    assert_shard_consistent(out, "00001")
    row0 = by_key(table)["laion_zh:0"]
    assert row0[S.SOURCE] == "laion_zh" and row0[S.CAPTION_ORIG] == "orig 0"
    assert row0[SOURCE_WIDTH] == 999  # what the source claimed ...
    assert (row0["original_width"], row0["original_height"]) == (50, 40)  # ... and the truth
    assert row0[S.SHA256] and len(row0[S.SHA256]) == 64
    samples = tar_samples(shard_files(str(out), "00000").tar)
    sample = samples["laion_zh:0"]
    assert sample["txt"].decode() == "一张图片 laion_zh:0"
    meta = json.loads(sample["json"])
    assert meta[S.KEY] == "laion_zh:0" and meta[S.SOURCE] == "laion_zh"
    assert Image.open(io.BytesIO(sample["jpg"])).size == (32, 32)
    stats = json.loads(Path(shard_files(str(out), "00000").stats).read_text())
    assert stats["count"] == table.num_rows and stats["successes"] == 10
    assert not (out / "downloads" / "_tmp").exists()


def test_rerun_skips_complete_shards(fault_run, server):
    out, report = fault_run
    files = shard_files(str(out), "00000")
    mtimes = [os.path.getmtime(p) for p in (files.tar, files.parquet, files.stats)]
    before = server.request_count("/img/a0.jpg")
    again = run(make_cfg(out))
    assert server.request_count("/img/a0.jpg") == before
    assert [os.path.getmtime(p) for p in (files.tar, files.parquet, files.stats)] == mtimes
    assert again["total"] == report["total"]


# --- resumability ---------------------------------------------------------------------------


def test_half_written_and_stale_shards_are_redone(server, tmp_path):
    out = tmp_path / "out"
    write_url_shard(out, "s", [row(f"k:{i}", server.image_url(f"h{i}")) for i in range(5)])
    cfg = make_cfg(out)
    run(cfg)
    files = shard_files(str(out), "s")
    count = server.request_count("/img/h0.jpg")

    os.remove(files.stats)  # killed before the commit mark was written
    run(cfg)
    assert server.request_count("/img/h0.jpg") == count + 1
    assert_shard_consistent(out, "s")

    with open(files.tar, "r+b") as f:  # a tar cut short
        f.truncate(700)
    run(cfg)
    assert server.request_count("/img/h0.jpg") == count + 2
    assert_shard_consistent(out, "s")

    # the URL shard changed since: outputs no longer match their input
    write_url_shard(out, "s", [row(f"k:{i}", server.image_url(f"h{i}")) for i in range(6)])
    report = run(cfg)
    assert report["total"]["rows_in"] == 6 and report["total"]["kept"] == 6
    assert_shard_consistent(out, "s")


def test_retry_failed_recovers_only_failed_rows(server, tmp_path):
    out = tmp_path / "out"
    steady = [row(f"ok:{i}", server.image_url(f"steady{i}")) for i in range(4)]
    flaky = [row(f"flaky:{i}", server.image_url(f"flaky{i}", fail=1)) for i in range(3)]
    gone = [row("gone:0", server.fault_url("http_404"))]
    write_url_shard(out, "r", steady + flaky + gone)
    cfg = make_cfg(out)
    first = run(cfg)
    assert first["total"]["kept"] == 4
    assert first["download"]["by_status"]["failed_to_download"] == {"http_5xx": 3, "http_4xx": 1}

    second = run(cfg, retry_failed=True)
    assert second["total"]["kept"] == 7
    assert second["download"]["by_status"]["failed_to_download"] == {"http_4xx": 1}
    assert second["shards"]["r"]["download_runs"] == 2
    assert second["total"]["balanced"]
    table = assert_shard_consistent(out, "r")
    assert table.num_rows == 8
    # successes of the first run were copied, not fetched again
    assert all(server.request_count(f"/img/steady{i}.jpg") == 1 for i in range(4))
    assert all(server.request_count(f"/img/flaky{i}.jpg") == 2 for i in range(3))
    rejects = pq.read_table(shard_files(str(out), "r").rejects)
    assert rejects[S.KEY].to_pylist() == ["gone:0"]

    third = run(cfg, retry_failed=True)  # the 404 stays a 404; nothing else changes
    assert third["total"]["kept"] == 7 and third["shards"]["r"]["download_runs"] == 3
    assert_shard_consistent(out, "r")


# --- the guard and file:// through the whole job ----------------------------------------------


def test_guard_blocks_loopback_directly_and_through_dns_unless_allowed(server, tmp_path):
    rows = [row("direct:0", server.image_url("g0")),
            row("dns:0", server.image_url("g1").replace("127.0.0.1", "localhost"))]
    blocked_out, allowed_out = tmp_path / "blocked", tmp_path / "allowed"
    write_url_shard(blocked_out, "g", rows)
    write_url_shard(allowed_out, "g", rows)
    before = server.request_count("/img/g0.jpg") + server.request_count("/img/g1.jpg")
    blocked = run(make_cfg(blocked_out, allow=()))
    assert blocked["download"]["by_status"]["failed_to_download"] == {PRIVATE_ADDRESS: 2}
    assert server.request_count("/img/g0.jpg") + server.request_count("/img/g1.jpg") == before
    reasons = pq.read_table(shard_files(str(blocked_out), "g").rejects)[S.REASON].to_pylist()
    assert reasons == [RS.REASON_PRIVATE_ADDRESS] * 2
    allowed = run(make_cfg(allowed_out, allow=("127.0.0.0/8",)))
    assert allowed["total"]["kept"] == 2


def test_file_urls_work_when_allowed_and_are_refused_otherwise(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i, src in enumerate(sorted(FIXTURE_JPEGS.glob("*.jpg"))[:3]):
        dest = images / src.name
        shutil.copy(src, dest)
        rows.append(row(f"coco_zh:{i}", dest.as_uri(), source="coco_zh"))
    (images / "made.png").write_bytes(render_image("made", "png"))
    rows.append(row("vg_zh:0", (images / "made.png").as_uri(), source="vg_zh"))
    on, off, elsewhere = tmp_path / "on", tmp_path / "off", tmp_path / "elsewhere"
    for out in (on, off, elsewhere):
        write_url_shard(out, "f", rows)
    allowed = run(make_cfg(on, allow=(), schemes=("http", "https", "file"), image_root=images))
    assert allowed["total"]["kept"] == 4
    refused = run(make_cfg(off, allow=()))
    assert refused["download"]["by_status"]["failed_to_download"] == {SCHEME_NOT_ALLOWED: 4}
    # The scheme listed, but the files are not under any source's image_root.
    (tmp_path / "other").mkdir()
    outside = run(make_cfg(elsewhere, allow=(), schemes=("http", "https", "file"), image_root=tmp_path / "other"))
    assert outside["download"]["by_status"]["failed_to_download"] == {SCHEME_NOT_ALLOWED: 4}


# --- the command line -------------------------------------------------------------------------


def _write_config(path: Path, out: Path, **download) -> Path:
    settings = {"timeout": 1, "retries": 0, "thread_count": 2, "image_size": 32, **download}
    path.write_text(yaml.safe_dump({
        "output": str(out),
        "filters": {"urls": {"allow_networks": ["127.0.0.0/8"]}},
        "download": settings,
    }))
    return path


def test_cli_runs_and_reports_missing_input_in_one_line(server, tmp_path, capsys):
    from zhclip.pipeline.cli import main

    out = tmp_path / "out"
    cfg = _write_config(tmp_path / "c.yaml", out)
    assert main(["download", "--config", str(cfg), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "zhclip metadata" in err and len(err.strip().splitlines()) == 1
    write_url_shard(out, "c", [row("c:0", server.image_url("cli"))])
    assert main(["download", "--config", str(cfg), "--no-progress"]) == 0
    assert "1 ok" in capsys.readouterr().out
    assert main(["download", "--config", str(cfg), "--shard", "nope"]) == 2
    bad = ["download", "--config", str(cfg), "--set", "filters.urls.allow_networks=[bogus]"]
    assert main(bad) == 2
    assert "bogus" in capsys.readouterr().err


# --- kill -9 in the middle, then resume --------------------------------------------------------


def _child_pids(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


@pytest.mark.slow
def test_kill_9_then_rerun_gives_the_uninterrupted_result(tmp_path):
    shards = {f"{i:05d}": [row(f"kill:{i}:{j}", None) for j in range(12)] for i in range(4)}
    with ImageServer(slow_seconds=2.0, image_delay=0.12) as srv:
        for name, rows in shards.items():
            for j, r in enumerate(rows):
                r[S.URL] = srv.fault_url("http_404") if j == 0 else srv.image_url(f"{name}-{j}")
        killed, reference = tmp_path / "killed", tmp_path / "reference"
        for out in (killed, reference):
            for name, rows in shards.items():
                write_url_shard(out, name, rows)
        cfg_path = _write_config(tmp_path / "k.yaml", killed, thread_count=2)
        env = dict(os.environ)
        proc = subprocess.Popen(
            [sys.executable, "-m", "zhclip.pipeline.cli", "download", "--config", str(cfg_path),
             "--no-progress"],
            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            deadline = time.time() + 120
            stats = killed / "downloads"
            while time.time() < deadline and not list(stats.glob("*_stats.json")):
                assert proc.poll() is None, "download finished before it could be killed"
                time.sleep(0.05)
            time.sleep(0.3)  # into the next shard
            assert proc.poll() is None, "download finished before it could be killed"
            children = _child_pids(proc.pid)
            assert children, "the shard should be running in a child process"
            os.kill(proc.pid, signal.SIGKILL)  # the command only, as a user would
            proc.wait()
            deadline = time.time() + 5  # its shard worker notices and exits too
            while time.time() < deadline and any(_alive(c) for c in children):
                time.sleep(0.1)
            assert not any(_alive(c) for c in children), "orphaned shard worker kept running"
        finally:
            try:  # whatever is left of the command's process group
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        committed = list(stats.glob("*_stats.json"))
        assert 1 <= len(committed) < len(shards)
        for tar in stats.glob("*.tar"):  # any tar under its final name is a whole tar
            tar_samples(str(tar))
        assert (stats / "_tmp").exists()  # the interrupted shard's work was left behind

        resumed = run(make_cfg(killed, thread_count=2, timeout=1))
        full = run(make_cfg(reference, thread_count=2, timeout=1))
    assert resumed["total"] == full["total"] and resumed["sources"] == full["sources"]
    assert success_keys(killed) == success_keys(reference)
    assert len(success_keys(killed)) == 4 * 11
    for name in shards:
        assert_shard_consistent(killed, name)
    assert not (stats / "_tmp").exists()


@pytest.mark.slow
def test_multi_processing_direct_runner(server, tmp_path):
    out = tmp_path / "out"
    for s in range(2):
        write_url_shard(out, f"m{s}", [row(f"mp:{s}:{i}", server.image_url(f"mp{s}-{i}"))
                                       for i in range(4)]
                        + [row(f"mp:{s}:meta", server.fault_url("redirect_metadata"))])
    report = run_download(
        make_cfg(out), ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
        progress=False,
    )
    assert report["total"]["kept"] == 8
    assert report["download"]["by_status"]["failed_to_download"] == {PRIVATE_ADDRESS: 2}
    for s in range(2):
        assert_shard_consistent(out, f"m{s}")


def test_empty_and_unreadable_url_shards(server, tmp_path):
    out = tmp_path / "out"
    write_url_shard(out, "empty", [])
    write_url_shard(out, "fine", [row("fine:0", server.image_url("fine"))])
    (out / "metadata" / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    report = run(make_cfg(out))
    assert report["shards"]["empty"]["done"] and report["shards"]["empty"]["rows_in"] == 0
    assert_shard_consistent(out, "empty")
    assert report["shards"]["fine"]["success"] == 1
    assert report["missing_shards"] == ["broken"]
    assert report["total"]["balanced"]


def test_output_on_a_non_local_filesystem(server):
    """Outputs go through fsspec, as they would to gs:// on Dataflow (here memory://)."""
    import fsspec

    fs = fsspec.filesystem("memory")
    root = f"/zhclip-test-{time.time_ns()}"
    rows = [row("mem:0", server.image_url("mem")), row("mem:1", server.fault_url("http_500"))]
    with fs.open(f"{root}/metadata/00000.parquet", "wb") as f:
        pq.write_table(S.conform(pa.Table.from_pylist(rows), S.METADATA_SCHEMA), f)
    try:
        cfg = make_cfg(Path("unused"))
        cfg.output = f"memory://{root}"
        report = run(cfg, isolate=False)  # memory:// is private to one process
        assert report["total"]["kept"] == 1 and report["total"]["balanced"]
        assert fs.exists(f"{root}/downloads/00000.tar") and fs.exists(f"{root}/report/download.json")
        assert fs.exists(f"{root}/rejects/download-00000.parquet")
        again = run(cfg, retry_failed=True, isolate=False)
        assert again["shards"]["00000"]["download_runs"] == 2
    finally:
        fs.rm(root, recursive=True)
