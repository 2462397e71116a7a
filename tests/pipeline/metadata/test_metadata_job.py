"""Stage 1 as a real Beam job: funnel, accounting, dedup determinism, CLI errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from zhclip.pipeline.cli import main as cli_main
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.core.config import config_from_dict
from zhclip.pipeline.demo.sample import generate_sample, sample_config
from zhclip.pipeline.metadata.job import run_metadata

REPO = Path(__file__).resolve().parents[3]


def _read_dir(folder: Path) -> pa.Table:
    files = sorted(folder.glob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]) if files else None


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    generate_sample(root, "http://127.0.0.1:9")
    return root


@pytest.fixture(scope="module")
def demo_run(sample, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    cfg = config_from_dict(sample_config(sample, out))
    return out, run_metadata(cfg, [])


def test_demo_sample_funnel_triggers_every_rule(demo_run):
    out, report = demo_run
    reasons = set(report["total"]["reasons"])
    expected = {"caption_too_short", "caption_too_long", "duplicate_url", "invalid_url",
                "private_address", "not_zh", "test_split", "malformed_row", "invalid_utf8",
                "untranslated"}
    assert expected <= reasons, expected - reasons
    lists = {r.split(":")[1] for r in reasons if r.startswith("blacklist:")}
    assert {"advertising", "filenames", "watermark", "contact"} <= lists
    for source, c in report["sources"].items():
        assert c["balanced"], source
        assert c["rows_in"] == c["kept"] + c["rejected"]
    assert report["total"]["balanced"]
    on_disk = json.loads((out / "report" / "metadata.json").read_text())
    assert on_disk["total"] == report["total"]


def test_outputs_match_report_and_schema(demo_run):
    out, report = demo_run
    kept = _read_dir(out / "metadata")
    rejects = _read_dir(out / "rejects")
    assert kept.schema == S.METADATA_SCHEMA
    assert rejects.schema == S.REJECT_SCHEMA
    assert kept.num_rows == report["total"]["kept"]
    not_materialised = report["total"]["reasons"].get("not_zh", 0)
    assert rejects.num_rows == report["total"]["rejected"] - not_materialised
    keys = kept.column(S.KEY).to_pylist()
    assert len(keys) == len(set(keys)), "a key was written twice"
    from zhclip.filters.dedup import dedup_keys

    dkeys = dedup_keys(kept, frozenset({"coco_zh", "vg_zh"})).to_pylist()
    assert len(dkeys) == len(set(dkeys)), "a URL survived dedup twice"
    # Translated sources keep the English; captions obey the length rule.
    coco = kept.filter(pa.compute.equal(kept.column(S.SOURCE), "coco_zh"))
    assert coco.num_rows and all(coco.column(S.CAPTION_ORIG).to_pylist())
    assert all(5 <= len(c) <= 50 for c in kept.column(S.CAPTION).to_pylist())
    for f in (out / "metadata").glob("*.parquet"):
        assert pq.read_metadata(f).num_rows <= 100


def test_dedup_winner_is_smallest_key(demo_run):
    out, _ = demo_run
    kept = _read_dir(out / "metadata")
    rejects = _read_dir(out / "rejects")
    dups = rejects.filter(pa.compute.equal(rejects.column(S.REASON), "duplicate_url"))
    kept_by_url: dict[str, str] = {}
    for url, key in zip(kept.column(S.URL).to_pylist(), kept.column(S.KEY).to_pylist(), strict=True):
        kept_by_url[url] = min(key, kept_by_url.get(url, key))
    for url, key in zip(dups.column(S.URL).to_pylist(), dups.column(S.KEY).to_pylist(), strict=True):
        assert kept_by_url[url] < key


def _snapshot(out: Path) -> tuple[dict, dict]:
    """Contents of every shard and reject file by name (bytes, for determinism)."""
    shards = {f.name: f.read_bytes() for f in sorted((out / "metadata").glob("*.parquet"))}
    rejects = {f.name: f.read_bytes() for f in sorted((out / "rejects").glob("*.parquet"))}
    return shards, rejects


@pytest.mark.slow
def test_in_process_and_multi_processing_give_identical_outputs(sample, demo_run, tmp_path):
    out_a, _ = demo_run
    cfg = config_from_dict(sample_config(sample, tmp_path / "mp"))
    run_metadata(cfg, ["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    assert _snapshot(out_a) == _snapshot(tmp_path / "mp")


def test_rerun_is_idempotent_and_clears_stale_shards(sample, tmp_path):
    cfg = config_from_dict(sample_config(sample, tmp_path / "o"))
    run_metadata(cfg, [])
    first = _snapshot(tmp_path / "o")
    (tmp_path / "o" / "metadata" / "99999-0000.parquet").write_bytes(b"stale")
    run_metadata(cfg, [])
    assert _snapshot(tmp_path / "o") == first


def test_adversarial_inputs_are_accounted_for(tmp_path):
    """Nulls, non-strings, 1 MB captions, bad UTF-8, malformed JSON, bad URLs, duplicates."""
    big = "长" * (1 << 20)
    lines = [
        {"url": "http://a.com/1.jpg", "caption": "一只猫在沙发上睡觉"},
        {"url": "http://a.com/1.jpg", "caption": "同一图片的重复描述"},
        {"url": "HTTP://A.COM:80/1.jpg#x", "caption": "换一种写法的同一图片"},
        {"url": None, "caption": "没有链接的一条描述"},
        {"url": 12345, "caption": "数字链接的一条描述"},
        {"url": "http://a.com/2.jpg", "caption": None},
        {"url": "http://a.com/3.jpg", "caption": 42},
        {"url": "http://a.com/4.jpg", "caption": ["list"]},
        {"url": "http://a.com/5.jpg", "caption": big},
        {"url": "http://169.254.169.254/latest/meta-data", "caption": "云服务器的元数据地址"},
        {"url": "http://[::1]/x.jpg", "caption": "回环地址上的一张图片"},
        {"url": "javascript:alert(1)", "caption": "不是图片的一个链接地址"},
        {"url": "http://a.com/6.jpg", "caption": "\u200b\u200b  \x00\t"},
    ]
    jsonl = tmp_path / "x.jsonl"
    jsonl.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n{not json\n")
    csv = tmp_path / "w.csv"
    csv.write_bytes(b"url,caption\nhttp://b.com/1.jpg,\xff\xfe\xfd\nhttp://b.com/2.jpg,a,b,c\n"
                    + "http://a.com/1.jpg,跨来源重复的图片描述\n".encode())
    bad_json = tmp_path / "captions_val2014.json"
    bad_json.write_text("{oops")
    cfg = config_from_dict({
        "output": str(tmp_path / "out"),
        "sources": [
            {"name": "mine", "kind": "generic", "paths": [str(jsonl)]},
            {"name": "wukong", "kind": "wukong", "paths": [str(csv)]},
            {"name": "coco_zh", "kind": "coco", "paths": [str(bad_json)]},
        ],
        "metadata": {"dedup_buckets": 3},
    })
    report = run_metadata(cfg, [])
    mine = report["sources"]["mine"]
    assert mine["rows_in"] == 14 and mine["balanced"]
    assert mine["kept"] == 1
    r = mine["reasons"]
    assert r["duplicate_url"] == 2 and r["invalid_url"] == 3 and r["private_address"] == 2
    assert r["malformed_row"] == 2 and r["caption_too_long"] == 1 and r["empty_caption"] == 2
    assert r["caption_too_short"] == 1
    w = report["sources"]["wukong"]
    assert w["rows_in"] == 3 and w["balanced"] and w["reasons"]["invalid_utf8"] == 1
    assert report["sources"]["coco_zh"]["reasons"] == {"malformed_file": 1}
    rejects = _read_dir(tmp_path / "out" / "rejects")
    assert max(len(c or "") for c in rejects.column(S.CAPTION).to_pylist()) <= 2000


def test_missing_input_exits_2_before_work(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"output": str(tmp_path / "out"),
                               "sources": [{"name": "w", "kind": "wukong", "paths": [str(tmp_path / "nope/*.csv")]}]}))
    rc = cli_main(["metadata", "--config", str(cfg)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and "no input matches" in err[0] and "nope" in err[0]
    assert not (tmp_path / "out").exists()


def test_cli_subprocess_passes_beam_flags_and_prints_report(sample, tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(sample_config(sample, tmp_path / "cli")))
    proc = subprocess.run(
        [sys.executable, "-m", "zhclip.pipeline.cli", "metadata", "--config", str(cfg), "--runner", "DirectRunner",
         "--set", "filters.caption.min_chars=4"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "stage 1 (metadata) funnel" in proc.stdout and "TOTAL" in proc.stdout
    report = json.loads((tmp_path / "cli" / "report" / "metadata.json").read_text())
    assert report["config"]["filters"]["caption"]["min_chars"] == 4


def test_blacklist_matches_full_width_spellings():
    from zhclip.filters.rules import RuleSet, apply_rules
    from zhclip.pipeline.sources.common import rows_table

    table = rows_table("mine", {S.SOURCE_ID: ["1", "2"], S.URL: ["http://a.com/1.jpg", "http://a.com/2.jpg"],
                                S.CAPTION: ["联系ＱＱ：１２３４５６７８９购买", "窗外的雪景，很美。"]})
    kept, rejects = apply_rules(table, RuleSet())
    assert kept.column(S.CAPTION).to_pylist() == ["窗外的雪景，很美。"]  # punctuation untouched
    assert rejects.column(S.REASON)[0].as_py().startswith("blacklist:contact:")


def test_rejects_parquet_says_which_rule_and_what_text(demo_run):
    """Blacklist reasons name a rule, never a raw pattern, and the matched text travels."""
    import unicodedata

    out, _ = demo_run
    rejects = _read_dir(out / "rejects")
    assert rejects.schema.field(S.MATCHED).type == pa.string()
    rows = rejects.to_pylist()
    hits = [r for r in rows if r[S.REASON].startswith("blacklist:")]
    assert hits
    for r in hits:
        name = r[S.REASON].split(":", 2)[2]
        assert not any(ch in name for ch in "\\()[]?*+|{}"), r[S.REASON]
        assert r[S.MATCHED] and r[S.MATCHED].lower() in unicodedata.normalize("NFKC", r[S.CAPTION]).lower()
    assert all(r[S.MATCHED] is None for r in rows if not r[S.REASON].startswith("blacklist:"))
