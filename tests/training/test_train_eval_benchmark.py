"""The stage switch watches a configured retrieval benchmark (issue 11, item 4).

The paper switches stages when downstream retrieval stops improving; with
``train.eval_data`` the trainer evaluates on such a benchmark (here in
Chinese-CLIP's own layout, five captions per image) instead of the corpus's
val shards. Each test fails if the trainer quietly evaluates something else:
the val shards (one caption per image), a model left in train mode (dropout
on), or a path that only fails hours in.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from zhclip.pipeline.cli import main as zhclip
from zhclip.training.config import train_config_from_dict
from zhclip.training.fixtures import (
    COLOURS,
    PLACES,
    SHAPES,
    draw_sample,
    png_bytes,
    tiny_train_section,
    write_chinese_clip_benchmark,
    write_shape_dataset,
    write_tiny_bert,
    write_tiny_image_tower,
)
from zhclip.training.runtime import setup_runtime
from zhclip.training.trainer import Trainer, TrainingError

torch.set_num_threads(1)
N_IMAGES, PER_IMAGE = 8, 5
PHRASINGS = ("{p}的{c}{s}", "{c}{s}在{p}", "{p}有{c}{s}", "{c}的{s}在{p}", "{s}是{c}的在{p}")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-switch")
    write_shape_dataset(root / "dataset", n_train=64, n_val=16, per_shard=32, size=40)
    rng = random.Random(3)
    combos = rng.sample([(p, c, s) for p in PLACES for c in COLOURS for s in SHAPES], N_IMAGES)
    images = [(500 + i, png_bytes(draw_sample(*combo, 40, rng))) for i, combo in enumerate(combos)]
    texts = [(PER_IMAGE * i + j, f.format(p=p, c=c, s=s), [500 + i])
             for i, (p, c, s) in enumerate(combos) for j, f in enumerate(PHRASINGS)]
    return {
        "root": root,
        "vit": write_tiny_image_tower(root / "vit", name="Tiny-ViT-bench"),
        "bert": write_tiny_bert(root / "bert", dropout=0.3),  # train-mode evaluation would show
        "bench": write_chinese_clip_benchmark(root / "muge", "valid", images, texts),
    }


def _trainer(world, out: Path, **over) -> Trainer:
    section = tiny_train_section(world["root"], world["vit"], world["bert"], output=str(out),
                                 eval_data=str(world["bench"]), **over)
    return Trainer(train_config_from_dict(section), setup_runtime("cpu", "fp32"))


def test_every_evaluation_is_on_the_benchmark_and_equals_zhclip_eval(world, tmp_path):
    out = tmp_path / "run"
    result = _trainer(world, out, eval_every=2, stage1={"steps": 4}, stage2={"steps": 2}).run()
    evals = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [2, 4, 6]
    for e in evals:  # the val shards hold 16 images with one caption each
        assert (e["n_images"], e["n_texts"]) == (N_IMAGES, N_IMAGES * PER_IMAGE), e
    # The last evaluation saw the exported weights: `zhclip eval` on the export must agree.
    metrics = tmp_path / "metrics.json"
    assert zhclip(["eval", "--model", str(out / "export.pt"), "--data", str(world["bench"]),
                   "--split", "valid", "--out", str(metrics)]) == 0
    reference = json.loads(metrics.read_text(encoding="utf-8"))
    for key in ("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10", "mean_recall"):
        assert result["eval"][key] == pytest.approx(reference[key], abs=1e-9), key


def test_the_switch_follows_the_benchmark_recall(world, tmp_path, monkeypatch):
    """Best stage-1 step and switch come from the benchmark's numbers, not the val split's."""
    t = _trainer(world, tmp_path / "switch", eval_every=1, save_every=1,
                 stage1={"steps": 20, "plateau_patience": 2}, stage2={"steps": 1})
    from zhclip.training import trainer as trainer_mod

    scripted = iter([30.0, 60.0, 50.0, 40.0, 10.0, 10.0])
    real = trainer_mod.evaluate_benchmark

    def on_benchmark(*args, **kwargs):
        assert args[3] is t.benchmark
        return {**real(*args, **kwargs), "mean_recall": next(scripted)}

    monkeypatch.setattr(trainer_mod, "evaluate_benchmark", on_benchmark)
    monkeypatch.setattr(trainer_mod, "evaluate", lambda *a, **k: pytest.fail("evaluated the val shards"))
    result = t.run()
    assert result["switched_at"] == 4  # best at step 2, then two evaluations without a gain
    assert t.state.best_step == 2 and t.state.best_recall == 60.0


def test_a_missing_or_malformed_benchmark_fails_before_training(world, tmp_path):
    with pytest.raises(TrainingError, match="train.eval_data: .*no retrieval benchmark"):
        section = tiny_train_section(world["root"], world["vit"], world["bert"],
                                     output=str(tmp_path / "o"), eval_data=str(tmp_path))
        Trainer(train_config_from_dict(section), setup_runtime("cpu", "fp32"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "valid_imgs.tsv").write_text("500\tnot-base64!\n", encoding="utf-8")
    (broken / "valid_texts.jsonl").write_text('{"text_id": 1, "text": "红色圆形", "image_ids": [9]}\n',
                                              encoding="utf-8")
    with pytest.raises(TrainingError, match="train.eval_data"):
        section = tiny_train_section(world["root"], world["vit"], world["bert"],
                                     output=str(tmp_path / "o2"), eval_data=str(broken))
        Trainer(train_config_from_dict(section), setup_runtime("cpu", "fp32"))
