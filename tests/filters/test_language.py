"""The Chinese-text check: pure rule, its place in apply_rules, and LAION rows through stage 1."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from zhclip.filters.language import is_chinese, not_chinese_reasons
from zhclip.filters.rules import RuleSet, apply_rules
from zhclip.pipeline.core import reasons as RS
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.core.config import config_from_dict
from zhclip.pipeline.metadata.job import run_metadata

KEPT = [
    "耐克Nike Air Max 270 男子跑步鞋", "iPhone 15 Pro Max 256GB 黑色手机", "2023年10月1日，北京天安门广场",
    "臺北101大樓的夜景非常漂亮", "香港維多利亞港的日落", "我の日常：周末在咖啡馆看书", "【新品】ins风陶瓷马克杯 350ml",
    "一只猫坐在窗台上晒太阳", "NBA总决赛第7场：勇士队获胜", "宝马X5 2024款 xDrive40Li 尊享型",
]
REJECTED = [
    "東京タワーの夜景がきれいです", "美味しいラーメンを食べました", "かわいい猫の写真", "Beautiful sunset over the sea",
    "IMG_2041 copy", "★★★☆☆ ~~~ ### !!!", "🎉🎉🎉好🎉🎉🎉", "안녕하세요 서울 여행", "12345 67890",
    "Продажа квартиры в Москве",
]


@pytest.mark.parametrize("caption", KEPT)
def test_chinese_with_brands_numbers_traditional_is_kept(caption):
    assert is_chinese(caption)


@pytest.mark.parametrize("caption", REJECTED)
def test_japanese_foreign_and_symbol_captions_are_not_chinese(caption):
    assert not is_chinese(caption)


def test_vectorised_result_has_nulls_where_kept():
    out = not_chinese_reasons(pa.chunked_array([["一只猫在睡觉", "かわいい猫です", None]]))
    assert out.to_pylist() == [None, RS.REASON_NOT_CHINESE, None]


def _table(captions: list[str]) -> pa.Table:
    n = len(captions)
    return S.conform(pa.table({
        S.KEY: [f"laion_zh_{i}" for i in range(n)], S.SOURCE: ["laion_zh"] * n,
        S.SOURCE_ID: [str(i) for i in range(n)], S.URL: [f"http://a.com/{i}.jpg" for i in range(n)],
        S.CAPTION: captions}), S.METADATA_SCHEMA)


def test_apply_rules_rejects_not_chinese_and_switch_turns_it_off():
    table = _table(KEPT + REJECTED)
    kept, rejects = apply_rules(table, RuleSet())
    assert kept.column(S.KEY).to_pylist() == [f"laion_zh_{i}" for i in range(len(KEPT))]
    reasons = rejects.column(S.REASON).to_pylist()
    # length comes first: "IMG_2041 copy" etc. are long enough, so every one is not_chinese
    assert reasons == [RS.REASON_NOT_CHINESE] * len(REJECTED)
    kept_off, _ = apply_rules(table, RuleSet(require_chinese=False, blacklist_lists=("advertising",)))
    assert kept_off.num_rows > len(KEPT)


def _laion_file(path, n_extra: int = 0) -> None:
    captions = ["一只狗在草地上奔跑", "東京タワーの夜景がきれいです", "Beautiful sunset over the sea",
                "耐克Nike Air Max 270 跑步鞋", "海边的日落非常美丽", "厨房里有一张木桌子"]
    n = len(captions)
    pq.write_table(pa.table({
        "SAMPLE_ID": pa.array(range(n), pa.int64()), "URL": [f"http://a.com/{i}.jpg" for i in range(n)],
        "TEXT": captions, "LANGUAGE": ["zh"] * n, "similarity": [0.3] * n,
        "punsafe": [0.01, 0.02, 0.03, 0.04, 0.95, None], "pwatermark": [0.1, 0.2, 0.3, 0.9, 0.1, 0.2],
    }), path)


def _run(tmp_path, name: str, **source):
    _laion_file(tmp_path / "laion.parquet")
    cfg = config_from_dict({"output": str(tmp_path / name), "sources": [
        {"name": "laion_zh", "kind": "laion", "paths": [str(tmp_path / "laion.parquet")], **source}]})
    report = run_metadata(cfg, [])
    rejects = pa.concat_tables([pq.read_table(f) for f in sorted((tmp_path / name / "rejects").glob("*.parquet"))])
    return report, dict(zip(rejects.column(S.KEY).to_pylist(), rejects.column(S.REASON).to_pylist(), strict=True))


def test_laion_rows_through_stage1_language_and_safety(tmp_path):
    report, reasons = _run(tmp_path, "off")
    assert reasons == {"laion_zh_1": RS.REASON_NOT_CHINESE, "laion_zh_2": RS.REASON_NOT_CHINESE}
    assert report["sources"]["laion_zh"]["kept"] == 4  # safety thresholds are off by default
    report, reasons = _run(tmp_path, "on", max_punsafe=0.5, max_pwatermark=0.8)
    assert reasons["laion_zh_4"] == RS.REASON_UNSAFE and reasons["laion_zh_3"] == RS.REASON_WATERMARK
    assert "laion_zh_5" not in reasons  # a missing punsafe cannot be shown to be above: kept
    assert report["sources"]["laion_zh"]["kept"] == 2 and report["total"]["balanced"]


def test_safety_threshold_without_the_column_is_a_clear_error(tmp_path):
    path = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"URL": ["http://a.com/1.jpg"], "TEXT": ["一只狗在跑"], "LANGUAGE": ["zh"]}), path)
    from zhclip.pipeline.core.config import SourceConfig
    from zhclip.pipeline.sources.laion import read

    src = SourceConfig(name="laion_zh", kind="laion", paths=[str(path)], max_punsafe=0.5)
    with pytest.raises(ValueError, match="max_punsafe.*punsafe"):
        list(read(src, str(path)))
