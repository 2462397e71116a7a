"""score.safety: NudeNet's detector as a stage-3 rule, checked against NudeNet itself
and run through the real stage 3 on photographs from the installed wheels."""

from __future__ import annotations

import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from zhclip.filters import image_rules
from zhclip.filters import near_duplicate_pairs as NP
from zhclip.pipeline.cli import main as cli_main
from zhclip.pipeline.core import reasons as RS
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.core.config import config_from_dict
from zhclip.pipeline.core.errors import ConfigError
from zhclip.pipeline.demo.synthetic import Row, write_download_shard
from zhclip.pipeline.score import safety as SF
from zhclip.pipeline.score.job import run_score
from zhclip.pipeline.shards import format as SH

nudenet = pytest.importorskip("nudenet", reason="the [safety] extra (nudenet) is not installed")


@pytest.fixture(scope="module")
def photos() -> dict:
    pytest.importorskip("skimage", reason="scikit-image ([dev]) ships the photographs")
    every = NP.wheel_photos()
    return {n: every[n] for n in ("astronaut", "grace_hopper", "coffee", "chelsea")}


def _safety(**kw):
    return config_from_dict({"score": {"safety": {"enabled": True, **kw}}}).score.safety


def test_inputs_and_scores_match_nudenet(photos):
    from nudenet import nudenet as reference

    model = SF.load_safety_model(_safety())
    for name in ("chelsea", "astronaut"):  # chelsea is 451x300: the padding is exercised
        data = NP.encode(photos[name])
        blob = reference._read_image(data, SF.INPUT_SIDE)[0][0]
        assert np.abs(SF.preprocess(NP.reopen(data)) - blob).max() < 1e-6, name
        mine = model.class_scores([NP.reopen(data)])[0]
        found = nudenet.NudeDetector().detect(data)
        for det in found:  # every detection NudeNet reports, we score at least as high
            assert mine[det["class"]] >= det["score"] - 1e-4, (name, det)
        if found:
            assert max(mine.values()) == pytest.approx(max(d["score"] for d in found), abs=1e-4)


def test_rule_is_pure_and_names_what_it_found():
    scores = {"FACE_FEMALE": 0.81, "BELLY_EXPOSED": 0.65, "FEET_EXPOSED": 0.2}
    reason, matched = image_rules.safety_reason(
        scores, ["BELLY_EXPOSED", "FACE_FEMALE", "FEET_EXPOSED"], 0.6
    )
    assert reason == RS.REASON_UNSAFE_IMAGE and matched == "FACE_FEMALE 0.81, BELLY_EXPOSED 0.65"
    assert image_rules.safety_reason(scores, ["FEET_EXPOSED"], 0.6) == (None, None)


def _cfg(out, **safety) -> dict:
    return {
        "output": str(out),
        "score": {"backend": "precomputed", "safety": {"enabled": True, **safety}},
        "sources": [{"name": "wukong", "kind": "wukong", "paths": ["x"]}],
        "shards": {"samples_per_shard": 8, "val_fraction": 0.0},
    }


def _folder(tmp_path, photos) -> None:
    rows = [Row(f"wukong_{n}", image=NP.downloaded(img)) for n, img in photos.items()]
    write_download_shard(tmp_path / SH.DOWNLOADS_DIR, "00000", rows, seed=5)


def test_stage3_rejects_what_the_configured_classes_find(tmp_path, photos):
    # No unsafe picture is needed to test the mechanism: faces are a class too.
    _folder(tmp_path, photos)
    report = run_score(
        config_from_dict(_cfg(tmp_path, classes=["FACE_FEMALE"], threshold=0.5, batch_size=2)), []
    )
    t = pq.read_table(tmp_path / "rejects" / "score-00000.parquet").to_pylist()
    got = {r[S.KEY]: (r[S.REASON], r[S.MATCHED]) for r in t}
    assert set(got) == {"wukong_astronaut", "wukong_grace_hopper"}
    assert all(
        reason == RS.REASON_UNSAFE_IMAGE and matched.startswith("FACE_FEMALE 0.")
        for reason, matched in got.values()
    )
    kept = set(SH.read_dataset_table(str(tmp_path / SH.DATASET_DIR)).column(S.KEY).to_pylist())
    assert kept == {"wukong_coffee", "wukong_chelsea"}
    assert report["total"]["reasons"] == {RS.REASON_UNSAFE_IMAGE: 2} and report["total"]["balanced"]


def test_default_classes_keep_benign_photos(tmp_path, photos):
    _folder(tmp_path, photos)
    report = run_score(config_from_dict(_cfg(tmp_path)), [])
    assert report["total"]["kept"] == len(photos) and not report["total"]["reasons"]


def test_missing_nudenet_stops_on_the_driver_in_one_line(tmp_path, photos, monkeypatch, capsys):
    _folder(tmp_path, photos)
    monkeypatch.setitem(sys.modules, "nudenet", None)  # import nudenet now raises ImportError
    with pytest.raises(ConfigError, match=r"zhclip\[safety\]"):
        run_score(config_from_dict(_cfg(tmp_path)), [])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(_cfg(tmp_path)))
    assert cli_main(["score", "--config", str(cfg), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'zhclip[safety]'" in err[0], err
    assert not (tmp_path / SH.DATASET_DIR).exists()  # nothing ran


def test_unknown_class_is_a_config_error():
    with pytest.raises(ConfigError, match="NOT_A_CLASS"):
        SF.load_safety_model(_safety(classes=["NOT_A_CLASS"]))


def test_full_scale_config_turns_it_on_with_one_line():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[3] / "configs" / "chinese_clip.yaml").read_text()
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("# safety:"))
    on = yaml.safe_load(text.replace(line, line.replace("# safety:", "safety:", 1)))
    assert not config_from_dict(yaml.safe_load(text)).score.safety.enabled
    assert config_from_dict(on).score.safety.enabled
