"""Stage 3 on the real DirectRunner with real photographs: re-encoded and resized
copies merge, colour variants of the same photo stay, flat pictures are blank_image."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image
from zhclip.filters import near_duplicate_pairs as NP
from zhclip.pipeline.cli import main as cli_main
from zhclip.pipeline.core import reasons as RS
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.core.config import config_from_dict
from zhclip.pipeline.demo.synthetic import Row, write_download_shard
from zhclip.pipeline.score.job import run_score
from zhclip.pipeline.shards import format as SH


def _cfg(out, **score):
    return config_from_dict(_cfg_dict(out, **score))


def _cfg_dict(out, **score) -> dict:
    return {
        "output": str(out),
        "score": {"backend": "precomputed", **score},
        "sources": [{"name": "wukong", "kind": "wukong", "paths": ["x"]}],
        "shards": {"samples_per_shard": 8, "val_fraction": 0.0},
    }


def _rows() -> list[Row]:
    pytest.importorskip("skimage", reason="scikit-image ([dev]) ships the photographs")
    photos = NP.wheel_photos()
    astro, coffee = photos["astronaut"], photos["coffee"]
    rows = [
        Row("wukong_a0", image=NP.downloaded(astro)),
        Row("wukong_a1", image=NP.downloaded(NP.SAME["jpeg_q40"](astro))),
        Row("wukong_a2", image=NP.downloaded(NP.SAME["resize_0.5"](astro))),
        Row(
            "wukong_a3",
            image=NP.encode(NP.reopen(NP.downloaded(NP.SAME["sharpen"](astro))), "WEBP", 75),
        ),
        Row("wukong_a4", image=NP.downloaded(NP.SAME["crop_2pct"](astro))),
        Row("wukong_c0", image=NP.downloaded(coffee)),
    ]
    # the same photo in other colours: what teaches 红色 / 蓝色
    rows += [
        Row(
            f"wukong_v{i}",
            caption=f"颜色变体{i}号的宇航员照片",
            image=NP.downloaded(NP.RECOLOURED[v](astro)),
        )
        for i, v in enumerate(("hue_120", "channels_bgr", "grey"))
    ]
    rows += [
        Row(f"wukong_z{i}", image=NP.encode(Image.new("RGB", (224, 224), c), "JPEG", 80))
        for i, c in enumerate(((250, 0, 0), (0, 0, 250), (250, 250, 250)))
    ]
    return rows


def test_copies_merge_colour_variants_stay_flat_pictures_are_blank(tmp_path):
    rows = _rows()
    write_download_shard(tmp_path / SH.DOWNLOADS_DIR, "00000", rows[:6], seed=1)
    write_download_shard(tmp_path / SH.DOWNLOADS_DIR, "00001", rows[6:], seed=2)
    cfg = tmp_path / "score.yaml"
    cfg.write_text(yaml.safe_dump(_cfg_dict(tmp_path, near_duplicate_distance=8)))
    assert cli_main(["score", "--config", str(cfg), "--quiet"]) == 0  # a real `zhclip score`
    report = json.loads((tmp_path / "report" / "score.json").read_text())
    kept = sorted(SH.read_dataset_table(str(tmp_path / SH.DATASET_DIR)).column(S.KEY).to_pylist())
    assert kept == ["wukong_a0", "wukong_c0", "wukong_v0", "wukong_v1", "wukong_v2"]
    t = pq.read_table(tmp_path / "rejects" / "score-00000.parquet")
    reasons = dict(zip(t.column(S.KEY).to_pylist(), t.column(S.REASON).to_pylist(), strict=True))
    assert reasons == {
        **{f"wukong_a{i}": RS.REASON_NEAR_DUPLICATE_IMAGE for i in range(1, 5)},
        **{f"wukong_z{i}": RS.REASON_BLANK_IMAGE for i in range(3)},
    }
    matched = dict(zip(t.column(S.KEY).to_pylist(), t.column(S.MATCHED).to_pylist(), strict=True))
    assert {k: matched[k] for k in reasons if k.startswith("wukong_a")} == {
        f"wukong_a{i}": "copy of wukong_a0" for i in range(1, 5)
    }
    total = report["total"]
    assert total["reasons"][RS.REASON_BLANK_IMAGE] == 3 and total["balanced"]
    assert total["reasons"][RS.REASON_NEAR_DUPLICATE_IMAGE] == 4


def test_exact_hash_mode_keeps_colour_variants_too(tmp_path):
    rows = _rows()
    write_download_shard(tmp_path / SH.DOWNLOADS_DIR, "00000", rows, seed=3)
    report = run_score(_cfg(tmp_path), [])  # near_duplicate_distance 0: equal hash and colours
    kept = set(SH.read_dataset_table(str(tmp_path / SH.DATASET_DIR)).column(S.KEY).to_pylist())
    assert {"wukong_a0", "wukong_c0", "wukong_v0", "wukong_v1", "wukong_v2"} <= kept
    assert report["total"]["reasons"][RS.REASON_BLANK_IMAGE] == 3
