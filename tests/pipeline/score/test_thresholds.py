"""Score thresholds attach to the source kind (laion) by default and to names by
override; a threshold matching no source is a config error; a LAION source with
no threshold is reported loudly. End to end through `run_score` on real
download shards."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml
from zhclip.filters.image_rules import threshold_reason
from zhclip.pipeline.cli import main as cli_main
from zhclip.pipeline.core import reasons as RS
from zhclip.pipeline.core.config import config_from_dict, config_to_dict
from zhclip.pipeline.core.errors import ConfigError
from zhclip.pipeline.demo.synthetic import Row, write_download_shard
from zhclip.pipeline.score.job import REPORT_DIR, REPORT_NAME, run_score
from zhclip.pipeline.score.thresholds import plan_thresholds
from zhclip.pipeline.shards import format as SH

SIMS = [0.10, 0.20, 0.25, 0.2599, 0.26, 0.30, 0.40]


def _sources(*pairs: tuple[str, str]) -> list[dict]:
    return [{"name": n, "kind": k, "paths": [f"{n}/*"]} for n, k in pairs]


def _cfg(out: Path, sources: list[dict], **score) -> dict:
    return {"output": str(out), "sources": sources,
            "score": {"backend": "precomputed", **score},
            "shards": {"samples_per_shard": 50, "val_fraction": 0}}


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> Path:
    """One shard: a LAION source named laion_cn, and wukong rows with low similarity."""
    folder = tmp_path_factory.mktemp("dl") / SH.DOWNLOADS_DIR
    rows = [Row(f"laion_cn_{i}", source="laion_cn", similarity=s) for i, s in enumerate(SIMS)]
    rows += [Row(f"wukong_{i}", source="wukong", similarity=0.05) for i in range(3)]
    write_download_shard(folder, "00000", rows, seed=3)
    return folder


def _run(tmp_path: Path, downloads: Path, sources: list[dict], **score) -> dict:
    cfg = config_from_dict(_cfg(tmp_path, sources, **score))
    return run_score(cfg, [], downloads=str(downloads))


LAION_CN = _sources(("laion_cn", "laion"), ("wukong", "wukong"))


def test_laion_source_under_another_name_is_filtered_by_default(tmp_path, downloads):
    report = _run(tmp_path, downloads, LAION_CN)
    below = sum(s < 0.26 for s in SIMS)
    assert report["sources"]["laion_cn"]["reasons"] == {RS.REASON_LOW_SIMILARITY: below}
    assert report["sources"]["laion_cn"]["kept"] == len(SIMS) - below
    assert report["sources"]["wukong"] == {**report["sources"]["wukong"], "kept": 3, "reasons": {}}
    assert report["source_thresholds"] == {"laion_cn": 0.26}
    assert report["warnings"] == []
    saved = json.loads((tmp_path / REPORT_DIR / REPORT_NAME).read_text())
    assert saved["warnings"] == [] and saved["source_thresholds"] == {"laion_cn": 0.26}


def test_name_override_wins_over_kind(tmp_path, downloads):
    report = _run(tmp_path, downloads, LAION_CN, thresholds={"laion": 0.26, "laion_cn": 0.2})
    assert report["sources"]["laion_cn"]["reasons"] == {
        RS.REASON_LOW_SIMILARITY: sum(s < 0.2 for s in SIMS)}
    # A kind key reaches every source of that kind, wukong included when asked.
    report = _run(tmp_path, downloads, LAION_CN, thresholds={"laion": 0.3, "wukong": 0.1})
    assert report["sources"]["laion_cn"]["reasons"] == {
        RS.REASON_LOW_SIMILARITY: sum(s < 0.3 for s in SIMS)}
    assert report["sources"]["wukong"]["reasons"] == {RS.REASON_LOW_SIMILARITY: 3}


def test_laion_source_without_threshold_is_reported_loudly(tmp_path, downloads, caplog, capsys):
    """Through `zhclip score`: the report, the log and the terminal all say so."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(_cfg(tmp_path, LAION_CN, thresholds={"wukong": 0.0})))
    with caplog.at_level(logging.WARNING, logger="zhclip.pipeline.score.job"):
        assert cli_main(["score", "--config", str(cfg), "--downloads", str(downloads),
                         "--quiet"]) == 0
    report = json.loads((tmp_path / REPORT_DIR / REPORT_NAME).read_text())
    assert report["sources"]["laion_cn"]["kept"] == len(SIMS)  # nothing filtered ...
    assert len(report["warnings"]) == 1 and "'laion_cn' has no score threshold" in report["warnings"][0]
    assert any("laion_cn" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert "WARNING: LAION source 'laion_cn' has no score threshold" in capsys.readouterr().err


def test_downloads_of_an_unconfigured_source_are_reported(tmp_path, downloads):
    report = _run(tmp_path, downloads, _sources(("laion_cn", "laion")))
    assert any("'wukong' is in the downloads but not in the config" in w
               for w in report["warnings"])


def test_run_without_sources_maps_kinds_to_conventional_names(tmp_path):
    folder = tmp_path / SH.DOWNLOADS_DIR
    write_download_shard(folder, "00000", [Row("laion_zh_0", source="laion_zh", similarity=0.1),
                                           Row("laion_cn_0", source="laion_cn", similarity=0.1)])
    report = _run(tmp_path, folder, [])
    assert report["sources"]["laion_zh"]["reasons"] == {RS.REASON_LOW_SIMILARITY: 1}
    assert report["sources"]["laion_cn"]["reasons"] == {}  # unknown kind without sources ...
    assert any("laion -> laion_zh" in w for w in report["warnings"])  # ... and the report says so


# --- config and plan ------------------------------------------------------------------------


def test_threshold_matching_no_source_is_a_config_error():
    with pytest.raises(ConfigError, match=r"score.thresholds \['laion_zh'\] match no source"):
        config_from_dict(_cfg(Path("o"), LAION_CN, thresholds={"laion_zh": 0.26}))
    with pytest.raises(ConfigError, match="coco"):  # a kind no configured source has
        config_from_dict(_cfg(Path("o"), LAION_CN, thresholds={"coco": 0.2}))
    with pytest.raises(ConfigError, match="laoin"):  # set through --set as well
        config_from_dict(_cfg(Path("o"), LAION_CN), ["score.thresholds.laoin=0.3"])


def test_old_name_keyed_configs_stay_valid_and_default_fits_any_sources():
    old = config_from_dict(_cfg(Path("o"), _sources(("laion_zh", "laion")),
                                thresholds={"laion_zh": 0.26}))
    assert plan_thresholds(old).by_source == {"laion_zh": 0.26}
    wukong_only = config_from_dict(_cfg(Path("o"), _sources(("wukong", "wukong"))))
    # Workers rebuild the config from its dump, where the default is explicit.
    again = config_from_dict(config_to_dict(wukong_only))
    assert plan_thresholds(again).by_source == {} and plan_thresholds(again).warnings == []


def test_rule_uses_resolved_names():
    by_source = plan_thresholds(config_from_dict(_cfg(Path("o"), LAION_CN))).by_source
    assert threshold_reason("laion_cn", 0.2599, by_source) == RS.REASON_LOW_SIMILARITY
    assert threshold_reason("laion_cn", 0.26, by_source) is None
    assert threshold_reason("wukong", 0.0, by_source) is None
