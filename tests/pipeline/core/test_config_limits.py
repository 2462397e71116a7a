"""A config cannot expand past a bound: billion-laughs YAML fails fast with one line."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from zhclip.pipeline.core.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[3]


def _laughs(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        refs = ", ".join([f"*a{i - 1}"] * 10)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "train:\n" + "\n".join("  " + x for x in lines) + f"\n  bomb: *a{levels - 1}\n"


def test_billion_laughs_under_train_is_refused_before_expanding(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(_laughs(), encoding="utf-8")
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="expands to .* values through YAML aliases"):
        load_config(path)
    assert time.perf_counter() - started < 5


def test_bomb_in_a_set_override_is_refused():
    items = ["&a0 [" + ", ".join(["lol"] * 10) + "]"]
    items += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    with pytest.raises(ConfigError, match=r"--set train.bomb: expands to"):
        load_config(None, ["train.bomb=[" + ", ".join(items) + "]"])
    with pytest.raises(ConfigError, match="not a YAML value"):
        load_config(None, ["train.x=[unclosed"])


def test_real_configs_and_small_aliases_still_load(tmp_path):
    for cfg in sorted((ROOT / "configs").glob("*.yaml")):
        load_config(cfg)
    path = tmp_path / "ok.yaml"
    path.write_text("train:\n  base: &b {lr: 0.001}\n  stage1: *b\n", encoding="utf-8")
    assert load_config(path).train["stage1"] == {"lr": 0.001}
