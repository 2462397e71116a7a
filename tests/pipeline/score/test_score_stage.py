"""`zhclip score` end to end on the real Beam DirectRunner, with planted faults."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image
from zhclip.pipeline.cli import main as cli_main
from zhclip.pipeline.core import reasons as RS
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.core.config import config_from_dict
from zhclip.pipeline.demo.synthetic import Row, make_jpeg, standard_downloads, write_download_shard
from zhclip.pipeline.score.job import run_score
from zhclip.pipeline.score.tiny_mclip import build_tiny_models
from zhclip.pipeline.shards import format as SH
from zhclip.pipeline.shards.verify import verify_dataset

DUP = make_jpeg(4242)


def fault_downloads(folder: Path) -> dict[str, str | None]:
    """Two download shards with one of each fault; returns key -> expected reject reason."""
    expected: dict[str, str | None] = {}
    rows0 = [
        Row("laion_zh_low", source="laion_zh", similarity=0.2),
        Row("laion_zh_high", source="laion_zh", similarity=0.3),
        Row("laion_zh_null", source="laion_zh", similarity=None),
        Row("wukong_lowsim", source="wukong", similarity=0.01),  # no threshold for wukong
        Row("wukong_html", image=b"<html>404</html>"),
        Row("wukong_nojpg", drop_image_member=True),
        Row("wukong_failed", image=None),  # stage 2 already rejected it: not counted here
        Row("wukong_dup_b", image=DUP),
        Row("wukong_png", image=make_jpeg(7, fmt="PNG")),
    ]
    rows1 = [Row(f"wukong_{i}") for i in range(5)] + [Row("wukong_dup_a", image=DUP)]
    write_download_shard(folder, "00000", rows0, seed=1)
    write_download_shard(folder, "00001", rows1, seed=2)
    expected.update({
        "laion_zh_low": RS.REASON_LOW_SIMILARITY, "laion_zh_high": None,
        "laion_zh_null": RS.REASON_LOW_SIMILARITY, "wukong_lowsim": None,
        "wukong_html": RS.REASON_DECODE_ERROR, "wukong_nojpg": RS.REASON_MISSING_MEMBER,
        "wukong_dup_b": RS.REASON_DUPLICATE_IMAGE, "wukong_dup_a": None, "wukong_png": None,
        **{f"wukong_{i}": None for i in range(5)},
    })
    return expected


def _cfg(out: Path, **score):
    return config_from_dict({
        "output": str(out),
        "score": {"backend": "precomputed", **score},
        "shards": {"samples_per_shard": 3, "val_fraction": 0.25},
    })


def _dataset_files(out: Path) -> dict[str, bytes]:
    folder = out / SH.DATASET_DIR
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    return build_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def precomputed_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pre")
    expected = fault_downloads(out / SH.DOWNLOADS_DIR)
    report = run_score(_cfg(out), [])
    return out, expected, report


def test_every_fault_ends_in_its_reason_and_accounting_holds(precomputed_run):
    out, expected, report = precomputed_run
    rejects = pq.read_table(out / "rejects" / "score-00000.parquet")
    assert rejects.schema.equals(S.REJECT_SCHEMA)
    assert set(rejects.column(S.STAGE).to_pylist()) == {"score"}
    got = dict(zip(rejects.column(S.KEY).to_pylist(), rejects.column(S.REASON).to_pylist(),
                   strict=True))
    assert got == {k: r for k, r in expected.items() if r is not None}

    kept = SH.read_dataset_table(str(out / SH.DATASET_DIR))
    assert sorted(kept.column(S.KEY).to_pylist()) == sorted(k for k, r in expected.items() if r is None)

    assert report["total"]["balanced"] and all(s["balanced"] for s in report["sources"].values())
    assert report["sources"]["laion_zh"] == {
        "rows_in": 3, "kept": 1, "rejected": 2, "balanced": True,
        "reasons": {RS.REASON_LOW_SIMILARITY: 2}}
    assert report["sources"]["wukong"]["rows_in"] == 11  # the failed download is stage 2's
    assert report["not_downloaded_rows"] == 1
    hist = report["histogram"]
    assert len(hist["bin_edges"]) == len(hist["counts"]["laion_zh"]) + 1
    assert sum(hist["counts"]["laion_zh"]) == 2 and sum(hist["counts"]["wukong"]) == 1


def test_shards_follow_the_contract(precomputed_run):
    out, _, _ = precomputed_run
    folder = out / SH.DATASET_DIR
    assert verify_dataset(str(folder)) == []
    manifest = SH.read_manifest(str(folder))
    for split, info in manifest["splits"].items():
        sizes = [s["samples"] for s in manifest["shards"] if s["split"] == split]
        assert all(n == 3 for n in sizes[:-1]) and 0 < sizes[-1] <= 3
        assert sum(sizes) == info["samples"]
    assert set(manifest["splits"]) == {"train", "val"}
    for sample in (s for t in SH.list_dataset_shards(str(folder)) for s in SH.iter_shard(t)):
        assert Image.open(io.BytesIO(sample.image)).format == "JPEG"  # PNG download re-encoded
        assert sample.meta[S.SHA256] == hashlib.sha256(sample.image).hexdigest()
        assert SH.split_for_key(sample.key, 0.25) in manifest["shards"][0]["split"] + "val"
        if sample.key == "laion_zh_high":
            assert sample.meta[S.SCORE] == pytest.approx(0.3)


def test_output_loads_with_datasets_webdataset_and_torch(precomputed_run, tmp_path):
    import webdataset as wds
    from zhclip.pipeline.shards.loading import (
        ZhclipIterableDataset,
        load_hf_dataset,
        webdataset_urls,
    )

    out, _, _ = precomputed_run
    folder = str(out / SH.DATASET_DIR)
    n_train = SH.read_manifest(folder)["splits"]["train"]["samples"]
    ds = load_hf_dataset(folder, "train", cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == n_train
    row = ds[0]
    assert row["jpg"].size[0] > 0 and row["txt"] and row["json"][S.KEY]
    meta = load_hf_dataset(folder, "train", builder="parquet", cache_dir=str(tmp_path / "hf"))
    assert meta.column_names == S.DATASET_COLUMNS and meta.num_rows == n_train

    got = list(wds.WebDataset(webdataset_urls(folder, "train"), shardshuffle=False).decode("pil"))
    assert len(got) == n_train and {"jpg", "txt", "json"} <= set(got[0])

    import torch

    it = ZhclipIterableDataset(folder, "train", transform=lambda im: torch.tensor(im.size))
    loader = torch.utils.data.DataLoader(it, batch_size=None, num_workers=2)
    keys = [s["meta"][S.KEY] for s in loader]
    assert sorted(keys) == sorted(r["json"][S.KEY] for r in ds)  # each sample once over workers


def test_decontamination_drops_near_copies_of_eval_images(tmp_path):
    rows = [Row(f"wukong_{i}") for i in range(4)]
    write_download_shard(tmp_path / SH.DOWNLOADS_DIR, "00000", rows)
    evals = tmp_path / "eval"
    evals.mkdir()
    seed = int(hashlib.sha1(b"wukong_2").hexdigest()[:8], 16)
    # The evaluation copy is the same picture re-encoded at another quality.
    Image.open(io.BytesIO(make_jpeg(seed))).save(evals / "test.jpg", quality=60)
    (evals / "README.txt").write_text("not an image")
    report = run_score(_cfg(tmp_path, decontaminate=str(evals)), [])
    assert report["total"]["reasons"] == {RS.REASON_TEST_OVERLAP: 1}
    kept = SH.read_dataset_table(str(tmp_path / SH.DATASET_DIR)).column(S.KEY).to_pylist()
    assert sorted(kept) == ["wukong_0", "wukong_1", "wukong_3"]


def test_mclip_runs_are_byte_identical_and_scores_in_range(tiny_models, tmp_path):
    standard_downloads(tmp_path / "a" / SH.DOWNLOADS_DIR, n_shards=2, per_shard=10)
    standard_downloads(tmp_path / "b" / SH.DOWNLOADS_DIR, n_shards=2, per_shard=10)
    score = {**tiny_models, "batch_size": 3, "device": "cpu", "thresholds": {}}
    r0 = run_score(_cfg(tmp_path / "a", **score), [])
    assert r0["total"]["kept"] == 20
    table = SH.read_dataset_table(str(tmp_path / "a" / SH.DATASET_DIR))
    scores = np.array(table.column(S.SCORE).to_pylist(), dtype=float)
    assert np.all((scores >= -1) & (scores <= 1)) and np.ptp(scores) > 0
    laion = sorted(s for s, src in zip(scores, table.column(S.SOURCE).to_pylist(), strict=True)
                   if src == "laion_zh")
    assert sum(sum(v) for v in r0["histogram"]["counts"].values()) == 20

    # The tiny random model's cosines are not calibrated: put the LAION threshold
    # at its median so the rule bites, and check it bites LAION only.
    score["thresholds"] = {"laion_zh": float(np.median(laion))}
    r1 = run_score(_cfg(tmp_path / "a", **score), [])
    assert r1["sources"]["laion_zh"]["reasons"] == {
        RS.REASON_LOW_SIMILARITY: sum(s < score["thresholds"]["laion_zh"] for s in laion)}
    assert r1["sources"]["laion_zh"]["kept"] == 5
    assert r1["sources"]["wukong"]["reasons"] == {}

    first = _dataset_files(tmp_path / "a")
    run_score(_cfg(tmp_path / "a", **score), [])
    assert _dataset_files(tmp_path / "a") == first  # rerun in place: same bytes, manifest too
    run_score(_cfg(tmp_path / "b", **score), ["--direct_num_workers=2",
                                              "--direct_running_mode=multi_threading"])
    other = _dataset_files(tmp_path / "b")
    # Another output folder and runner mode: same shard bytes (the manifest names the folder).
    assert {k: v for k, v in other.items() if k != SH.MANIFEST_NAME} == {
        k: v for k, v in first.items() if k != SH.MANIFEST_NAME}


def test_rerun_with_other_sizes_leaves_no_stale_shards(tmp_path):
    standard_downloads(tmp_path / SH.DOWNLOADS_DIR, n_shards=1, per_shard=10)
    run_score(config_from_dict({"output": str(tmp_path), "score": {"backend": "precomputed"},
                                "shards": {"samples_per_shard": 2, "val_fraction": 0}}), [])
    assert len(SH.read_manifest(str(tmp_path / SH.DATASET_DIR))["shards"]) == 4
    report = run_score(config_from_dict({"output": str(tmp_path), "score": {"backend": "precomputed"},
                                         "shards": {"samples_per_shard": 50, "val_fraction": 0}}), [])
    assert sorted(report["removed_stale_files"]) == [
        f"train/train-{i:06d}.{e}" for i in (1, 2, 3) for e in ("parquet", "tar")]
    assert verify_dataset(str(tmp_path / SH.DATASET_DIR)) == []


def test_cli_score_command(tmp_path, capsys):
    standard_downloads(tmp_path / "dl", n_shards=1, per_shard=4)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"output": str(tmp_path / "out"),
                                   "score": {"backend": "precomputed"}}))
    assert cli_main(["score", "--config", str(cfg), "--downloads", str(tmp_path / "dl"), "--quiet"]) == 0
    assert (tmp_path / "out" / "report" / "score.json").is_file()
    assert cli_main(["score", "--config", str(cfg), "--set", f"output={tmp_path / 'empty'}"]) == 2
    assert "no download shards" in capsys.readouterr().err
    assert cli_main(["score", "--config", str(cfg), "--downloads", str(tmp_path / "dl"),
                     "--set", "score.backend=mclip", "--set", "score.model=/no/such/model"]) == 2


@pytest.mark.slow
def test_scores_what_zhclip_download_writes(tmp_path):
    """Stage 2's real output (loopback server, img2dataset) is stage 3's input, joined on key."""
    import pyarrow as pa
    from zhclip.pipeline.demo.imageserver import ImageServer
    from zhclip.pipeline.download.job import run_download

    cfg = config_from_dict({
        "output": str(tmp_path),
        "filters": {"urls": {"allow_networks": ["127.0.0.0/8"]}},
        "download": {"timeout": 2, "retries": 0, "thread_count": 4, "image_size": 32},
        "score": {"backend": "precomputed"},
        "shards": {"samples_per_shard": 4, "val_fraction": 0.0},
    })
    with ImageServer() as srv:
        rows = [{S.KEY: f"laion_zh_{i}.v{i}", S.URL: srv.image_url(f"p{i}", ("jpg", "png", "webp")[i % 3],
                                                                     60, 40),
                 S.CAPTION: f"一张测试图片{i}", S.SOURCE: "laion_zh", S.SIMILARITY: 0.2 + 0.05 * i,
                 S.CAPTION_ORIG: f"test picture {i}"} for i in range(5)]
        rows.append({S.KEY: "wukong_404", S.URL: srv.fault_url("http_404"), S.CAPTION: "坏链接的图片",
                     S.SOURCE: "wukong"})
        (tmp_path / "metadata").mkdir()
        pq.write_table(S.conform(pa.Table.from_pylist(rows), S.METADATA_SCHEMA),
                       tmp_path / "metadata" / "00000.parquet")
        run_download(cfg, [], progress=False)
    report = run_score(cfg, [])
    assert report["total"]["rows_in"] == 5 and report["not_downloaded_rows"] == 1
    assert report["sources"]["laion_zh"]["reasons"] == {RS.REASON_LOW_SIMILARITY: 2}  # 0.20, 0.25
    table = SH.read_dataset_table(str(tmp_path / SH.DATASET_DIR))
    got = {r[S.KEY]: r for r in table.to_pylist()}
    assert sorted(got) == [f"laion_zh_{i}.v{i}" for i in (2, 3, 4)]
    assert got["laion_zh_3.v3"][S.CAPTION_ORIG] == "test picture 3"
    assert got["laion_zh_3.v3"][S.SCORE] == pytest.approx(0.35)
    assert (got["laion_zh_3.v3"][S.WIDTH], got["laion_zh_3.v3"][S.HEIGHT]) == (32, 32)
    assert verify_dataset(str(tmp_path / SH.DATASET_DIR)) == []
