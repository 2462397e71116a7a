"""`zhclip shards ls/stats/head/show/verify/report` on shards written by pipeline.shards.

Every command runs through pipeline.cli.main, the same entry point as the console
script; damaged copies of a clean folder check that verify names each damage and
that the other commands exit non-zero with one clear line, never a traceback.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image
from zhclip.pipeline.cli import main as zhclip
from zhclip.pipeline.core import report as R
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.demo.damage import (
    copy_folder,
    make_sample,
    rewrite_sidecar,
    rewrite_tar,
    truncate,
    write_dataset,
)
from zhclip.pipeline.demo.synthetic import Row, standard_downloads, write_download_shard
from zhclip.pipeline.shards import manifest as MF
from zhclip.pipeline.shards import verify as V
from zhclip.pipeline.shards import writer as SW

REPO = Path(__file__).resolve().parents[3]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = zhclip(["shards", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("shards")
    out = base / "out"
    samples = write_dataset(out / "dataset")
    rows = standard_downloads(out / "downloads")
    return {"out": out, "dataset": out / "dataset", "downloads": out / "downloads",
            "samples": samples, "rows": rows, "base": base}


@pytest.fixture
def damaged(built, tmp_path):
    """A fresh copy of the clean dataset folder for one test to damage."""
    return copy_folder(built["dataset"], tmp_path / "dataset")


# --- ls -----------------------------------------------------------------------------------------


def test_ls_dataset_lists_shards_counts_bytes_and_split(built, capsys):
    rc, out, _ = run(capsys, "ls", str(built["dataset"]), "--json")
    assert rc == 0
    listing = json.loads(out)
    assert [(r["shard"], r["split"], r["samples"]) for r in listing["shards"]] == [
        ("train-000000", "train", 5), ("train-000001", "train", 5), ("val-000000", "val", 3)]
    for r in listing["shards"]:
        assert r["tar_bytes"] == (built["dataset"] / r["split"] / f"{r['shard']}.tar").stat().st_size
        assert r["parquet_bytes"] == (built["dataset"] / r["split"] / f"{r['shard']}.parquet").stat().st_size
        assert r["problems"] == []
    assert listing["total_samples"] == 13 and listing["kind"] == "dataset"

    rc, out, _ = run(capsys, "ls", built["dataset"].as_uri(), "--json")  # file:// goes through pyarrow's fs
    assert rc == 0 and json.loads(out)["total_samples"] == 13

    rc, out, err = run(capsys, "ls", str(built["out"]))  # an output root picks dataset/
    assert rc == 0 and "inspecting" in err and "3 shards, 13 samples" in out


def test_ls_download_folder_counts_success_rows(built, tmp_path, capsys):
    folder = copy_folder(built["downloads"], tmp_path / "downloads")
    write_download_shard(folder, "00002", [Row("wukong_a"), Row("wukong_b", image=None)])
    rc, out, _ = run(capsys, "ls", str(folder), "--json")
    assert rc == 0
    listing = json.loads(out)
    assert listing["kind"] == "downloads"
    assert [(r["shard"], r["samples"]) for r in listing["shards"]] == [("00000", 12), ("00001", 12), ("00002", 1)]


def test_ls_names_shards_with_a_missing_half(damaged, capsys):
    (damaged / "train" / "train-000001.parquet").unlink()
    rc, out, err = run(capsys, "ls", str(damaged))
    assert rc == 1
    assert "train-000001" in err and "sidecar missing" in err


# --- stats --------------------------------------------------------------------------------------


def test_stats_counts_sources_lengths_scores_sizes(built, capsys):
    rc, out, _ = run(capsys, "stats", str(built["dataset"]), "--json")
    assert rc == 0
    stats = json.loads(out)
    samples = built["samples"]
    assert stats["samples"] == 13 and stats["shards"] == 3
    assert stats["by_source"] == dict(Counter(s.meta[S.SOURCE] for s in samples))
    lengths = [len(s.caption) for s in samples]
    cap = stats["caption_length"]
    assert (cap["min"], cap["max"]) == (min(lengths), max(lengths))
    assert cap["histogram"]["counts"][min(lengths)] == lengths.count(min(lengths))
    assert sum(cap["histogram"]["counts"]) == 13
    score = stats["score"]
    assert sum(score["histogram"]["counts"]) == 13 and score["histogram"]["below"] == 0
    assert score["mean"] == pytest.approx(sum(s.meta[S.SCORE] for s in samples) / 13)
    edges = score["histogram"]["bin_edges"]
    top = max(s.meta[S.SCORE] for s in samples)  # 0.32 falls in [0.32, 0.34)
    assert score["histogram"]["counts"][next(i for i in range(len(edges) - 1) if edges[i] <= top < edges[i + 1])] >= 1
    assert stats["image_sizes"]["top"] == {"64x64": 13}
    assert stats["duplicate_keys"] == {}

    rc, out, _ = run(capsys, "stats", str(built["dataset"]))
    assert rc == 0 and "samples by source" in out and "laion_zh" in out and "duplicate keys: 0" in out


def test_stats_on_downloads_uses_similarity_as_score(built, capsys):
    rc, out, _ = run(capsys, "stats", str(built["downloads"]), "--json")
    assert rc == 0
    stats = json.loads(out)
    rows = built["rows"]
    assert stats["samples"] == len(rows)
    assert stats["score"]["missing"] == sum(r.similarity is None for r in rows)
    assert stats["by_source"] == dict(Counter(r.source for r in rows))


def test_stats_and_verify_find_duplicate_keys_across_shards(tmp_path, capsys):
    folder = tmp_path / "dataset"
    same = [make_sample(i) for i in range(3)]
    infos = [SW.write_shard(str(folder), "train", 0, same),
             SW.write_shard(str(folder), "train", 1, [make_sample(9), same[1]])]
    MF.write_manifest(str(folder), MF.build_manifest(infos, None))
    rc, out, _ = run(capsys, "stats", str(folder), "--json")
    assert rc == 0 and json.loads(out)["duplicate_keys"] == {same[1].key: 2}
    rc, out, _ = run(capsys, "verify", str(folder), "--json")
    result = json.loads(out)
    assert rc == 1 and result["problem_counts"] == {V.DUPLICATE_KEY: 1}
    assert result["problems"][0]["where"] == same[1].key


def test_stats_reads_the_tar_when_a_sidecar_is_missing(damaged, capsys):
    (damaged / "val" / "val-000000.parquet").unlink()
    rc, out, err = run(capsys, "stats", str(damaged), "--json")
    assert rc == 1 and "val-000000: parquet sidecar missing" in err
    assert json.loads(out)["samples"] == 13  # still counted, from the tar


# --- head / show --------------------------------------------------------------------------------


def test_head_prints_first_samples_in_order(built, capsys):
    rc, out, _ = run(capsys, "head", str(built["dataset"]), "-n", "7", "--json")
    assert rc == 0
    rows = [json.loads(line) for line in out.splitlines()]
    want = built["samples"][:7]
    assert [r[S.KEY] for r in rows] == [s.key for s in want]
    assert [r[S.CAPTION] for r in rows] == [s.caption for s in want]
    assert rows[5]["shard"] == "train-000001" and rows[2][S.SCORE] == want[2].meta[S.SCORE]

    rc, out, _ = run(capsys, "head", str(built["dataset"]), "-n", "2")
    assert rc == 0 and want[0].caption in out and want[1].key in out and want[2].key not in out


def test_show_writes_image_and_prints_caption(built, tmp_path, capsys):
    target = built["samples"][6]
    jpg, png = tmp_path / "x.jpg", tmp_path / "x.png"
    rc, out, _ = run(capsys, "show", str(built["dataset"]), target.key, "--out", str(jpg))
    assert rc == 0 and target.caption in out and target.meta[S.SHA256] in out
    assert jpg.read_bytes() == target.image
    rc, _, _ = run(capsys, "show", str(built["dataset"]), target.key, "--out", str(png))
    with Image.open(png) as img:
        assert rc == 0 and img.format == "PNG" and img.size == (64, 64)

    rc, out, _ = run(capsys, "show", str(built["downloads"]), built["rows"][5].key)
    assert rc == 0 and built["rows"][5].caption in out

    rc, _, err = run(capsys, "show", str(built["dataset"]), "no_such_key")
    assert rc == 2 and "'no_such_key' not found" in err


# --- verify -------------------------------------------------------------------------------------


def test_verify_clean_folders(built, capsys):
    for folder in (built["dataset"], built["downloads"]):
        rc, out, _ = run(capsys, "verify", str(folder))
        assert rc == 0 and "OK: no problems found" in out
    rc, out, _ = run(capsys, "verify", str(built["dataset"]), "--json")
    result = json.loads(out)
    assert result["ok"] and result["samples"] == 13 and result["shards"] == 3
    # the single-pass hash equals the manifest's (i.e. really the whole file was read)
    assert result["bytes_read"] == sum((built["dataset"] / n.split("-")[0] / f"{n}.tar").stat().st_size
                                       for n in ("train-000000", "train-000001", "val-000000"))


def _cut_at_member_boundary(tar_path: Path, member_index: int) -> None:
    """Cut exactly where a member header starts: tarfile alone reads this as a clean, shorter tar."""
    with tarfile.open(tar_path) as tar:
        offset = tar.getmembers()[member_index].offset
    tar_path.write_bytes(tar_path.read_bytes()[:offset])


def _drop_member(name: str):
    return lambda member, data: None if member == name else data


def _replace_member(name: str, new: bytes):
    return lambda member, data: new if member == name else data


def _json_key(name: str, key: str):
    def change(member, data):
        if member != name:
            return data
        meta = json.loads(data)
        meta[S.KEY] = key
        return json.dumps(meta).encode()
    return change


def _set_manifest_sha(folder: Path, name: str) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    for shard in manifest["shards"]:
        if name in shard["files"]:
            shard["files"][name]["sha256"] = "0" * 64
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _change_caption(rows):
    rows[2][S.CAPTION] = "被改过的说明文字"
    return rows


# (damage, expected problem kinds, where the first problem of the main kind points)
DAMAGES = {
    "truncated_tar": (lambda d: truncate(d / "train" / "train-000001.tar", 0.5),
                      {V.TAR_DAMAGED, V.CHECKSUM_MISMATCH, V.COUNT_MISMATCH, V.SIDECAR_MISMATCH},
                      "train-000001.tar"),
    "tar_cut_at_member_boundary": (lambda d: _cut_at_member_boundary(d / "train" / "train-000000.tar", 6),
                                   {V.TAR_DAMAGED, V.CHECKSUM_MISMATCH, V.COUNT_MISMATCH, V.SIDECAR_MISMATCH},
                                   "train-000000.tar"),
    "sample_without_caption": (lambda d: rewrite_tar(d / "train" / "train-000000.tar", _drop_member("wukong_00001.txt")),
                               {V.MISSING_CAPTION, V.CHECKSUM_MISMATCH}, "train-000000/wukong_00001"),
    "non_utf8_caption": (lambda d: rewrite_tar(d / "val" / "val-000000.tar",
                                               _replace_member("laion_zh_00012.txt", b"\xff\xfe\xe4\xb8bad")),
                         {V.CAPTION_NOT_UTF8, V.CHECKSUM_MISMATCH}, "val-000000/laion_zh_00012"),
    "empty_caption": (lambda d: rewrite_tar(d / "val" / "val-000000.tar", _replace_member("laion_zh_00012.txt", b" ")),
                      {V.CAPTION_EMPTY, V.CHECKSUM_MISMATCH, V.SIDECAR_MISMATCH}, "val-000000/laion_zh_00012"),
    "image_undecodable": (lambda d: rewrite_tar(d / "train" / "train-000000.tar",
                                                _replace_member("coco_zh_00002.jpg", b"<html>404</html>")),
                          {V.IMAGE_UNDECODABLE, V.IMAGE_SHA256_MISMATCH, V.CHECKSUM_MISMATCH,
                           V.SIDECAR_MISMATCH}, "train-000000/coco_zh_00002"),
    "image_missing": (lambda d: rewrite_tar(d / "train" / "train-000000.tar", _drop_member("coco_zh_00002.jpg")),
                      {V.MISSING_IMAGE, V.CHECKSUM_MISMATCH}, "train-000000/coco_zh_00002"),
    "json_missing": (lambda d: rewrite_tar(d / "train" / "train-000000.tar", _drop_member("coco_zh_00002.json")),
                     {V.MISSING_JSON, V.CHECKSUM_MISMATCH}, "train-000000/coco_zh_00002"),
    "json_names_other_key": (lambda d: rewrite_tar(d / "train" / "train-000000.tar",
                                                   _json_key("coco_zh_00002.json", "coco_zh_99999")),
                             {V.KEY_MISMATCH, V.CHECKSUM_MISMATCH, V.SIDECAR_MISMATCH},
                             "train-000000/coco_zh_00002"),
    "missing_sidecar": (lambda d: (d / "train" / "train-000001.parquet").unlink(),
                        {V.SIDECAR_MISSING, V.FILE_MISSING}, "train-000001"),
    "sidecar_disagrees": (lambda d: rewrite_sidecar(d / "train" / "train-000000.parquet", _change_caption),
                          {V.SIDECAR_MISMATCH, V.CHECKSUM_MISMATCH}, "train-000000/coco_zh_00002"),
    "missing_tar": (lambda d: (d / "val" / "val-000000.tar").unlink(), {V.FILE_MISSING}, "val-000000.tar"),
    "checksum_only": (lambda d: _set_manifest_sha(d, "val/val-000000.tar"), {V.CHECKSUM_MISMATCH},
                      "val-000000.tar"),
    "manifest_missing": (lambda d: (d / "manifest.json").unlink(), {V.MANIFEST_MISSING}, "manifest.json"),
    "manifest_unreadable": (lambda d: (d / "manifest.json").write_text("{not json"), {V.MANIFEST_UNREADABLE},
                            "manifest.json"),
    "shard_not_in_manifest": (lambda d: SW.write_shard(str(d), "train", 2, [make_sample(50)]),
                              {V.NOT_IN_MANIFEST}, "train-000002"),
}


# where the rule "first non-consequential kind" would pick another one
MAIN_KIND = {"missing_sidecar": V.SIDECAR_MISSING, "image_undecodable": V.IMAGE_UNDECODABLE,
             "sidecar_disagrees": V.SIDECAR_MISMATCH}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_verify_names_each_damage(damaged, capsys, damage):
    plant, kinds, where = DAMAGES[damage]
    plant(damaged)
    rc, out, err = run(capsys, "verify", str(damaged), "--json")
    assert rc == 1, out
    result = json.loads(out)
    assert set(result["problem_counts"]) == kinds, result["problems"]
    main_kind = MAIN_KIND.get(damage) or sorted(
        kinds - {V.CHECKSUM_MISMATCH, V.SIDECAR_MISMATCH, V.COUNT_MISMATCH} or {V.CHECKSUM_MISMATCH})[0]
    assert any(p["kind"] == main_kind and p["where"] == where for p in result["problems"]), result["problems"]
    assert "Traceback" not in err
    rc, out, _ = run(capsys, "verify", str(damaged))
    assert rc == 1 and "FAILED" in out and main_kind in out


@pytest.mark.parametrize("damage,command", [
    ("truncated_tar", ["head", "-n", "100"]),
    ("truncated_tar", ["browse"]),
    ("non_utf8_caption", ["head", "-n", "100"]),
    ("sample_without_caption", ["head", "-n", "100"]),
    ("image_undecodable", ["browse"]),
    ("missing_sidecar", ["stats"]),
    ("missing_sidecar", ["ls"]),
])
def test_other_commands_exit_nonzero_on_damage_with_a_clear_line(damaged, tmp_path, capsys, damage, command):
    DAMAGES[damage][0](damaged)
    extra = ["--out", str(tmp_path / "browse")] if command[0] == "browse" else []
    rc, out, err = run(capsys, command[0], str(damaged), *command[1:], *extra)
    assert rc == 1
    assert "problem(s) while reading" in err and "Traceback" not in err
    named = {"truncated_tar": "damaged or truncated", "non_utf8_caption": "caption is not UTF-8",
             "tar_cut_at_member_boundary": (lambda d: _cut_at_member_boundary(d / "train" / "train-000000.tar", 6),
                                   {V.TAR_DAMAGED, V.CHECKSUM_MISMATCH, V.COUNT_MISMATCH, V.SIDECAR_MISMATCH},
                                   "train-000000.tar"),
    "sample_without_caption": "train-000000/wukong_00001: sample without caption", "image_undecodable": "image does not decode",
             "missing_sidecar": "sidecar missing"}[damage]
    assert named in err


def test_head_shows_a_sample_without_caption(damaged, capsys):
    DAMAGES["sample_without_caption"][0](damaged)
    rc, out, err = run(capsys, "head", str(damaged), "-n", "3", "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert rows[1][S.KEY] == "wukong_00001" and rows[1][S.CAPTION] is None  # shown, and named
    assert rc == 1 and "wukong_00001: sample without caption" in err


def test_verify_download_folder_damages(built, tmp_path, capsys):
    folder = copy_folder(built["downloads"], tmp_path / "downloads")
    write_download_shard(folder, "00002", [Row("wukong_x1"), Row("wukong_x2", drop_image_member=True)],
                         extra_tar_only=[Row("wukong_stray")])
    write_download_shard(folder, "00003", [Row("wukong_y1")])
    (folder / "00003.parquet").unlink()
    truncate(folder / "00001.tar", 0.4)
    rc, out, _ = run(capsys, "verify", str(folder), "--json")
    result = json.loads(out)
    assert rc == 1
    assert set(result["problem_counts"]) == {V.MISSING_IMAGE, V.SIDECAR_MISMATCH, V.SIDECAR_MISSING,
                                             V.TAR_DAMAGED}
    found = {(p["kind"], p["where"]) for p in result["problems"]}
    assert (V.MISSING_IMAGE, "00002/wukong_x2") in found
    assert (V.SIDECAR_MISMATCH, "00002/wukong_stray") in found
    assert (V.SIDECAR_MISSING, "00003") in found
    assert (V.TAR_DAMAGED, "00001.tar") in found
    assert any(k == V.SIDECAR_MISMATCH and w.startswith("00001/") for k, w in found)  # rows lost to truncation


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["ls", "stats", "head", "verify", "browse", "show"])
def test_bad_input_paths_give_one_line_and_exit_2(tmp_path, capsys, command):
    empty = tmp_path / "empty"
    empty.mkdir()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("hello")
    a_file = other / "notes.txt"
    extra = {"browse": ["--out", str(tmp_path / "b")], "show": ["somekey"]}.get(command, [])
    for path, words in ((empty, "is empty"), (other, "holds no shards"), (tmp_path / "nope", "no such folder"),
                        (a_file, "is a file")):
        args = [command, str(path), *extra] if command != "show" else [command, str(path), "somekey"]
        rc, out, err = run(capsys, *args)
        assert rc == 2, (command, path)
        assert words in err and err.count("\n") == 1 and err.startswith(f"zhclip shards {command}: error:")


def test_console_script_prints_no_traceback_on_damage(damaged):
    truncate(damaged / "train" / "train-000000.tar", 0.3)
    proc = subprocess.run([sys.executable, "-m", "zhclip.pipeline.cli", "shards", "head", str(damaged), "-n", "50"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "train-000000.tar: damaged or truncated" in proc.stderr


# --- report ---------------------------------------------------------------------------------------


def _write_reports(out: Path) -> dict:
    report_dir = out / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    meta = R.finalize("metadata", R.merge_counts([
        R.counts("laion_zh", 100, 70, {"caption_too_short": 20, "not_zh": 10}),
        R.counts("wukong", 50, 45, {"duplicate_url": 5})]))
    download = R.finalize("download", R.merge_counts([
        R.counts("laion_zh", 70, 55, {"download:http_4xx": 15}),
        R.counts("wukong", 45, 35, {"download:http_4xx": 5, "download:invalid_image": 5})]))
    score = R.finalize("score", R.merge_counts([
        R.counts("laion_zh", 55, 40, {"low_similarity": 15}), R.counts("wukong", 35, 33, {"duplicate_image": 2})]),
        {"histogram": {"bin_edges": [0.0, 0.2, 0.4], "counts": {"laion_zh": [5, 35], "wukong": [3, 30]}}})
    for name, rep in (("metadata", meta), ("download", download), ("score", score)):
        (report_dir / f"{name}.json").write_text(json.dumps(rep, ensure_ascii=False))
    return {"metadata": meta, "download": download, "score": score}


def test_report_funnel_data_png_and_summary(built, tmp_path, capsys):
    from zhclip.pipeline.inspect import report as IR

    out = tmp_path / "out"
    copy_folder(built["dataset"], out / "dataset")
    reports = _write_reports(out)
    steps = IR.funnel_steps(reports)
    assert [(s.stage, s.count) for s in steps] == [("metadata", 150), ("metadata", 115), ("download", 90),
                                                   ("score", 73)]
    assert steps[2].by_source == {"laion_zh": 55, "wukong": 35}
    assert steps[3].by_source == {"laion_zh": 40, "wukong": 33}

    fig = IR.funnel_figure(steps)
    ax = fig.axes[0]
    by_height = sorted(zip(ax.get_yticks(), (t.get_text() for t in ax.get_yticklabels()), strict=True),
                       reverse=True)
    assert [text for _, text in by_height] == [f"{s.stage}: {s.label}" for s in steps]  # first on top
    labels = " ".join(t.get_text() for t in ax.texts)
    for s in steps:
        assert f"{s.count:,}" in labels
    assert "48.7%" in labels  # 73 of 150 reach the final shards

    rc, stdout, err = run(capsys, "report", str(out))
    assert rc == 0, err
    written = stdout.split()
    assert [Path(p).name for p in written] == ["funnel.png", "histograms.png", "summary.md", "summary.html"]
    with Image.open(out / "report" / "funnel.png") as img:
        img.load()
        assert img.size == (1000, 500)
        colours = len(img.convert("RGB").getcolors(maxcolors=1 << 20))
        assert colours > 20  # bars and text, not a blank canvas
    with Image.open(out / "report" / "histograms.png") as img:
        assert img.size == (1200, 450)
    md = (out / "report" / "summary.md").read_text()
    assert "| score | final: scored, deduplicated, kept | 73 | 48.7 | 40 | 33 |" in md
    assert "`download:http_4xx`: 20" in md and "13 samples in 3 shards" in md
    html = (out / "report" / "summary.html").read_text()
    assert '<img src="funnel.png"' in html and "<td>73</td>" in html


def test_report_survives_missing_and_malformed_stage_reports(tmp_path, capsys):
    out = tmp_path / "out"
    _write_reports(out)
    (out / "report" / "score.json").unlink()
    (out / "report" / "download.json").write_text("{truncated")
    rc, _, err = run(capsys, "report", str(out))
    assert rc == 1 and "download.json: unreadable" in err and "Traceback" not in err
    md = (out / "report" / "summary.md").read_text()
    assert "score.json not found" in md and "No dataset/ or downloads/ shards found." in md
    assert "| metadata | kept by caption/URL filters + dedup | 115 |" in md and "| download |" not in md
    with Image.open(out / "report" / "funnel.png") as img:
        assert img.size == (1000, 500)

    rc, _, err = run(capsys, "report", str(tmp_path / "empty_root"))
    assert rc == 2 and "no such folder" in err
    (tmp_path / "bare").mkdir()
    rc, _, err = run(capsys, "report", str(tmp_path / "bare"))
    assert rc == 2 and "neither report/*.json nor shards" in err


def test_sha_helper_matches_fixture():
    s = make_sample(3)
    assert s.meta[S.SHA256] == hashlib.sha256(s.image).hexdigest()
