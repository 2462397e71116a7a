"""Config loading: shape, validation errors naming the key, --set overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from zhclip.pipeline.core.config import ConfigError, config_from_dict, load_config

REPO = Path(__file__).resolve().parents[3]


def test_shipped_configs_load():
    paper = load_config(REPO / "configs" / "chinese_clip.yaml")
    assert paper.filters.caption.min_chars == 5
    assert paper.filters.caption.max_chars == 50
    assert paper.score.thresholds["laion"] == pytest.approx(0.26)
    assert {s.kind for s in paper.sources} == {"laion", "wukong", "coco", "visual_genome"}
    demo = load_config(REPO / "configs" / "demo.yaml")
    assert demo.output


def test_unknown_key_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"filters": {"caption": {"min_char": 4}}}))
    with pytest.raises(ConfigError, match=r"unknown key 'filters\.caption\.min_char'"):
        load_config(p)


def test_bad_value_is_named():
    with pytest.raises(ConfigError, match=r"'download\.image_size'"):
        config_from_dict({"download": {"image_size": "big"}})


def test_set_overrides_nested_and_lists():
    cfg = config_from_dict(
        {"sources": [{"name": "w", "kind": "wukong", "paths": ["a.csv"]}]},
        ["filters.caption.min_chars=4", "sources.0.paths=[b.csv, c.csv]", "filters.urls.allow_networks=[127.0.0.0/8]"],
    )
    assert cfg.filters.caption.min_chars == 4
    assert cfg.sources[0].paths == ["b.csv", "c.csv"]
    assert cfg.filters.urls.allow_networks == ["127.0.0.0/8"]


def test_set_unknown_key_fails():
    with pytest.raises(ConfigError, match="unknown key 'shards.samples'"):
        config_from_dict({}, ["shards.samples=3"])
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        config_from_dict({}, ["shards.samples_per_shard"])


def test_source_name_and_uniqueness():
    with pytest.raises(ConfigError, match="lowercase"):
        config_from_dict({"sources": [{"name": "Bad.Name", "kind": "wukong", "paths": ["x"]}]})
    with pytest.raises(ConfigError, match="repeated"):
        config_from_dict({"sources": [{"name": "a", "kind": "wukong", "paths": ["x"]}] * 2})


def test_relative_paths_resolve_against_config(tmp_path):
    (tmp_path / "sub").mkdir()
    p = tmp_path / "sub" / "c.yaml"
    p.write_text(yaml.safe_dump({"sources": [{"name": "w", "kind": "wukong", "paths": ["data/*.csv"]}]}))
    cfg = load_config(p)
    assert cfg.sources[0].paths == [str(tmp_path / "sub" / "data" / "*.csv")]
