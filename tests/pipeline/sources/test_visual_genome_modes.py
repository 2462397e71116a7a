"""Visual Genome as the Chinese-CLIP authors used it: one pair per image, phrases joined.

Runs the real stage-1 Beam job with the lookup translator, so the phrases are
translated one by one before they are joined, and the rules judge the join.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from zhclip.pipeline.core import reasons as RS
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.core.config import config_from_dict
from zhclip.pipeline.metadata.job import run_metadata
from zhclip.pipeline.sources.visual_genome import join_phrases

# english -> chinese; (region id, phrase, w, h) per image below.
TABLE = {
    "a busy street": "繁忙的街道", "a red bus": "一辆红色的公共汽车", "a white plate": "白色的盘子",
    "a tall tree": "一棵高大的树", "people walking": "行人在走路", "a red bus.": "一辆红色的公共汽车。",
    "a man wearing a very long coat with many buttons on the front": "一个男人穿着前面有很多扣子的很长的大衣",
    "blue sky": "蓝色的天空", "a dog": "一条狗", "grass": "草地", "a cat": "一只猫",
}
IMAGES = {
    1: [(11, "a red bus", 300, 200), (12, "a busy street", 800, 600), (13, "a white plate", 10, 10),
        (14, "a red bus.", 50, 50),  # same phrase after translation and trailing punctuation: once
        (15, "a man wearing a very long coat with many buttons on the front", 200, 250),
        (16, "a tall tree", 100, 300), (17, "people walking", 120, 100)],
    2: [(21, "blue sky", 500, 100), (22, "a dog", 100, 80), (23, "grass", 10, 10)],
    3: [(31, "a cat", 10, 10)],  # one short phrase: the joined caption is too short
    4: [(41, "untranslatable words", 10, 10), (42, "a dog", 20, 20), (43, "grass", 30, 30)],
}


def _write_vg(root: Path) -> dict:
    image_data = [{"image_id": i, "url": f"http://127.0.0.1/vg/{i}.jpg", "coco_id": None,
                   "width": 800, "height": 600} for i in IMAGES]
    regions = [{"id": i, "regions": [
        {"region_id": rid, "image_id": i, "phrase": p, "x": 0, "y": 0, "width": w, "height": h}
        for rid, p, w, h in regs]} for i, regs in sorted(IMAGES.items(), reverse=True)]
    (root / "image_data.json").write_text(json.dumps(image_data))
    (root / "region_descriptions.json").write_text(json.dumps(regions))
    (root / "zh.tsv").write_text("".join(f"{en}\t{zh}\n" for en, zh in TABLE.items()), encoding="utf-8")
    return {"name": "vg_zh", "kind": "visual_genome", "paths": [str(root / "region_descriptions.json")],
            "image_data": str(root / "image_data.json"), "dedup": "url_caption",
            "translate": {"backend": "lookup", "table": str(root / "zh.tsv")}}


def _run(root: Path, out: Path, **source) -> tuple[dict, pa.Table, pa.Table]:
    src = {**_write_vg(root), **source}
    cfg = config_from_dict({"output": str(out), "sources": [src],
                            "filters": {"urls": {"allow_networks": ["127.0.0.0/8"]}}})
    report = run_metadata(cfg, [])
    rows = pa.concat_tables([pq.read_table(f) for f in sorted((out / "metadata").glob("*.parquet"))])
    rejects = pa.concat_tables([pq.read_table(f) for f in sorted((out / "rejects").glob("*.parquet"))])
    return report, rows.sort_by(S.KEY), rejects


def test_join_phrases_largest_first_dedup_and_fit():
    caption, orig = join_phrases([("小", "s", 1), ("大的", "b", 9), ("大的。", "b2", 5), ("中等", "m", 4)], 50)
    assert caption == "大的，中等，小" and orig == "b; m; s"
    # a phrase that would overflow is skipped; a later, smaller one still fits
    caption, _ = join_phrases([("一" * 8, None, 9), ("二" * 5, None, 8), ("三", None, 1)], 10)
    assert caption == "一一一一一一一一，三"
    assert join_phrases([("一" * 20, None, 9)], 10)[0] == "一" * 20  # too long alone: rules reject it


def test_one_pair_per_image_with_translated_phrases_joined(tmp_path):
    report, rows, rejects = _run(tmp_path, tmp_path / "out")
    by_key = dict(zip(rows.column(S.KEY).to_pylist(), rows.column(S.CAPTION).to_pylist(), strict=True))
    # largest region first; the duplicate bus phrase once; the smallest (plate) would pass 50
    assert by_key["vg_zh_1"] == "繁忙的街道，一辆红色的公共汽车，一个男人穿着前面有很多扣子的很长的大衣，一棵高大的树，行人在走路"
    assert by_key["vg_zh_2"] == "蓝色的天空，一条狗，草地"
    assert by_key["vg_zh_4"] == "草地，一条狗"  # the untranslated phrase is a reject, not part of it
    assert all(len(c) <= 50 for c in by_key.values())
    assert rows.column(S.URL).to_pylist() == [f"http://127.0.0.1/vg/{i}.jpg" for i in (1, 2, 4)]
    assert rows.column(S.REGION_W).null_count == rows.num_rows  # whole image, no box
    assert rows.column(S.CAPTION_ORIG).to_pylist()[1] == "blue sky; a dog; grass"
    reasons = dict(zip(rejects.column(S.KEY).to_pylist(), rejects.column(S.REASON).to_pylist(), strict=True))
    assert reasons["vg_zh_3"] == RS.REASON_CAPTION_TOO_SHORT  # the joined caption met the rules
    assert reasons["vg_zh_4-41"] == RS.REASON_UNTRANSLATED
    assert sum(r == RS.REASON_MERGED_REGION for r in reasons.values()) == 6 + 2 + 1
    src = report["sources"]["vg_zh"]
    assert src["rows_in"] == 14 and src["kept"] == 3 and src["balanced"] and report["total"]["balanced"]


def test_image_mode_rerun_is_byte_identical(tmp_path):
    _run(tmp_path, tmp_path / "a")
    _run(tmp_path, tmp_path / "b")
    for sub in ("metadata", "rejects"):
        a = {p.name: p.read_bytes() for p in (tmp_path / "a" / sub).glob("*.parquet")}
        b = {p.name: p.read_bytes() for p in (tmp_path / "b" / sub).glob("*.parquet")}
        assert a == b and a


def test_regions_mode_keeps_one_pair_per_region_with_its_box(tmp_path):
    report, rows, _ = _run(tmp_path, tmp_path / "out", mode="regions")
    assert report["sources"]["vg_zh"]["balanced"]
    caps = dict(zip(rows.column(S.KEY).to_pylist(), rows.column(S.CAPTION).to_pylist(), strict=True))
    assert caps["vg_zh_12"] == "繁忙的街道" and "vg_zh_1" not in caps
    box = rows.filter(pa.compute.equal(rows.column(S.KEY), "vg_zh_16")).to_pylist()[0]
    assert (box[S.REGION_W], box[S.REGION_H]) == (100, 300)
