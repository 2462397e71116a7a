"""Final shard writing/reading, the manifest, and the readers of download folders."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from zhclip.pipeline.core import reasons as RS
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.demo.synthetic import Row, make_jpeg, write_download_shard
from zhclip.pipeline.shards import downloads as DL
from zhclip.pipeline.shards import format as SH
from zhclip.pipeline.shards import manifest as MF
from zhclip.pipeline.shards import writer as SW
from zhclip.pipeline.shards.verify import verify_dataset


def _samples(n: int, prefix: str = "wukong_") -> list[SH.ShardSample]:
    out = []
    for i in range(n):
        img = make_jpeg(i)
        key = f"{prefix}{i:04d}"
        meta = {S.SOURCE: "wukong", S.URL: f"http://x/{i}.jpg", S.CAPTION_ORIG: None,
                S.SCORE: 0.1 * i, S.WIDTH: 64, S.HEIGHT: 64, S.SHA256: hashlib.sha256(img).hexdigest()}
        out.append(SH.ShardSample(key, img, f"图片说明{i}", meta))
    return out


def _tree_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_shard_writer_layout_roundtrip(tmp_path):
    with SW.ShardWriter(str(tmp_path), "train", samples_per_shard=4) as w:
        for s in _samples(10):
            w.write(s)
    infos = w.written
    assert [i.samples for i in infos] == [4, 4, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["train"]  # one folder per split
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == [
        f"train-{i:06d}.{e}" for i in range(3) for e in ("parquet", "tar")]
    assert [f.name for f in infos[0].files] == ["train/train-000000.tar", "train/train-000000.parquet"]
    with tarfile.open(tmp_path / "train" / "train-000000.tar") as tar:
        members = tar.getmembers()
    assert [m.name for m in members[:3]] == ["wukong_0000.jpg", "wukong_0000.txt", "wukong_0000.json"]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.mode) for m in members} == {(0, 0, 0, "", 0o644)}

    back = list(SH.iter_shard(str(tmp_path / "train" / "train-000000.tar")))
    assert [s.key for s in back] == [f"wukong_{i:04d}" for i in range(4)]
    assert back[1].caption == "图片说明1" and back[1].image == make_jpeg(1)
    assert set(json.loads(json.dumps(back[1].meta))) == set(SH.JSON_FIELDS) | {S.CAPTION}
    table = pq.read_table(tmp_path / "train" / "train-000000.parquet")
    assert table.schema.equals(S.DATASET_SCHEMA)
    assert table.column(S.KEY).to_pylist() == [s.key for s in back]
    assert table.column(S.SHA256).to_pylist() == [hashlib.sha256(s.image).hexdigest() for s in back]


def test_same_samples_give_identical_bytes(tmp_path):
    for name in ("a", "b"):
        SW.write_shard(str(tmp_path / name), "train", 0, _samples(5))
    assert _tree_bytes(tmp_path / "a" / "train") == _tree_bytes(tmp_path / "b" / "train")
    # No temporary file is left behind.
    assert not [p for p in (tmp_path / "a" / "train").iterdir() if p.name.startswith(".tmp")]


def test_keys_with_dots_and_slashes_survive_webdataset(tmp_path):
    import webdataset as wds

    sample = _samples(1)[0]
    sample.key = "mine_a.b/c%d"
    SW.write_shard(str(tmp_path), "val", 0, [sample])
    got = list(wds.WebDataset(str(tmp_path / "val" / "val-000000.tar"), shardshuffle=False))
    assert len(got) == 1 and set(got[0]) >= {"jpg", "txt", "json"}
    assert json.loads(got[0]["json"])[S.KEY] == "mine_a.b/c%d"
    assert SH.key_from_member_stem(got[0]["__key__"]) == "mine_a.b/c%d"


def test_manifest_checksums_verify_and_catch_damage(tmp_path):
    infos = [SW.write_shard(str(tmp_path), "train", i, _samples(3, f"k{i}_")) for i in range(2)]
    MF.write_manifest(str(tmp_path), MF.build_manifest(infos, {"output": "x"}))
    manifest = SH.read_manifest(str(tmp_path))
    assert manifest["total_samples"] == 6 and manifest["splits"]["train"]["shards"] == 2
    for shard in manifest["shards"]:
        for name, meta in shard["files"].items():
            assert hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() == meta["sha256"]
    assert manifest["versions"]["pyarrow"]
    assert verify_dataset(str(tmp_path)) == []

    tar = tmp_path / "train" / "train-000001.tar"
    data = bytearray(tar.read_bytes())
    data[700] ^= 0xFF
    tar.write_bytes(bytes(data))
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "val-000009.parquet").write_bytes(b"stray")
    (tmp_path / "train-000007.tar").write_bytes(b"stray, flat")
    problems = verify_dataset(str(tmp_path))
    assert any(p.startswith("checksum_mismatch: train-000001.tar") for p in problems)
    assert any(p.startswith("not_in_manifest: val-000009") for p in problems)
    assert any(p.startswith("not_in_manifest: train-000007") for p in problems)


def test_split_for_key_is_stable_and_near_the_fraction():
    keys = [f"laion_zh_{i}" for i in range(20000)]
    val = [k for k in keys if SH.split_for_key(k, 0.05) == SH.SPLIT_VAL]
    assert 0.04 < len(val) / len(keys) < 0.06
    assert val == [k for k in keys if SH.split_for_key(k, 0.05) == SH.SPLIT_VAL]
    assert all(SH.split_for_key(k, 0.0) == SH.SPLIT_TRAIN for k in keys[:100])


# --- download folders ------------------------------------------------------------------


def test_download_reader_joins_on_key_and_reports_missing_members(tmp_path):
    rows = [
        Row("wukong_1"), Row("wukong_2", image=None),  # failed download: stage 2's reject
        Row("wukong_3", drop_image_member=True),  # success row, no .jpg in the tar
        Row("laion_zh_4", source="laion_zh", similarity=0.3, caption_orig="a cat"),
    ]
    orphan = Row("wukong_9")
    write_download_shard(tmp_path, "00000", rows, extra_tar_only=[orphan])
    (shard,) = DL.list_download_shards(str(tmp_path))
    contents = DL.read_download_shard(shard)
    by_key = {s.key: s for s in contents.samples}
    assert sorted(by_key) == ["laion_zh_4", "wukong_1", "wukong_3", "wukong_9"]
    assert contents.not_success_rows == 1
    assert by_key["wukong_3"].problem == RS.REASON_MISSING_MEMBER
    assert by_key["wukong_9"].problem is None  # tar-only sample described by its json member
    laion = by_key["laion_zh_4"]
    assert (laion.source, laion.similarity, laion.caption_orig) == ("laion_zh", 0.3, "a cat")
    assert laion.image == make_jpeg(int(hashlib.sha1(b"laion_zh_4").hexdigest()[:8], 16))


def test_download_reader_survives_truncated_tar_and_missing_halves(tmp_path):
    write_download_shard(tmp_path, "00000", [Row(f"wukong_{i}") for i in range(6)])
    write_download_shard(tmp_path, "00001", [Row("wukong_a")])
    write_download_shard(tmp_path, "00002", [Row("wukong_b")])
    tar = tmp_path / "00000.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    (tmp_path / "00001.tar").unlink()
    (tmp_path / "00002.parquet").unlink()
    (tmp_path / "00003_stats.json").write_text("{}")
    shards = DL.list_download_shards(str(tmp_path))
    assert [(s.name, s.tar is not None, s.parquet is not None) for s in shards] == [
        ("00000", True, True), ("00001", False, True), ("00002", True, False)]
    c0, c1, c2 = (DL.read_download_shard(s) for s in shards)
    assert len(c0.samples) == 6 and any("cut short" in n for n in c0.notes)
    missing = [s.key for s in c0.samples if s.problem == RS.REASON_MISSING_MEMBER]
    assert 0 < len(missing) < 6
    assert [s.problem for s in c1.samples] == [RS.REASON_MISSING_MEMBER]
    assert [(s.key, s.problem) for s in c2.samples] == [("wukong_b", None)]


@pytest.mark.slow
def test_reader_reads_real_img2dataset_output(tmp_path):
    """img2dataset itself downloads file:// URLs; our reader joins its tar and parquet."""
    import pandas as pd
    from img2dataset import download

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    urls = []
    for i in range(4):
        (imgs / f"{i}.jpg").write_bytes(make_jpeg(i, size=80))
        urls.append(f"file://{imgs / f'{i}.jpg'}")
    urls.append(f"file://{imgs / 'absent.jpg'}")
    pd.DataFrame({"url": urls, "caption": [f"说明{i}" for i in range(5)],
                  "source": ["wukong"] * 5}).to_parquet(tmp_path / "in.parquet")
    download(url_list=str(tmp_path / "in.parquet"), input_format="parquet", url_col="url",
             caption_col="caption", save_additional_columns=["source"], output_format="webdataset",
             output_folder=str(tmp_path / "out"), image_size=32, processes_count=1,
             thread_count=2, compute_hash="sha256", distributor="multiprocessing")
    (shard,) = DL.list_download_shards(str(tmp_path / "out"))
    contents = DL.read_download_shard(shard)
    assert contents.not_success_rows == 1
    assert len(contents.samples) == 4
    assert all(s.problem is None and s.image and s.source == "wukong" for s in contents.samples)
    assert sorted(s.caption for s in contents.samples) == [f"说明{i}" for i in range(4)]
