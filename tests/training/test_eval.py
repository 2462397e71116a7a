"""`zhclip eval`: recall on several-captions-per-image benchmarks, parity with Chinese-CLIP's
own evaluation scripts (cn-clip), the benchmark layouts, and zero-shot classification."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from zhclip.pipeline.cli import main as zhclip
from zhclip.training import tiny
from zhclip.training.config import train_config_from_dict
from zhclip.training.data import eval_loader, list_shards
from zhclip.training.evaluate import evaluate, ranks, retrieval_metrics
from zhclip.training.export import export_model, load_export
from zhclip.training.fixtures import (
    COLOURS,
    PLACES,
    SHAPES,
    all_captions,
    draw_sample,
    png_bytes,
    tiny_train_section,
    write_chinese_clip_benchmark,
    write_shape_dataset,
    write_tiny_image_tower,
)
from zhclip.training.model import build_model
from zhclip.training.tokenizer import load_tokenizer
from zhclip.training.zeroshot import classification_metrics, ensemble

torch.set_num_threads(1)
N_IMAGES = 24
PHRASINGS = ("{p}的{c}{s}", "{c}{s}在{p}", "{p}有一个{c}{s}", "一个{c}的{s}，{p}", "{s}是{c}的，位于{p}")
SAME = "左上的红色圆形"


def _combos() -> list[tuple[str, str, str]]:
    return [(p, c, s) for p in PLACES for c in COLOURS for s in SHAPES]


def _captions_of(combo: tuple[str, str, str]) -> list[str]:
    p, c, s = combo
    return [f.format(p=p, c=c, s=s) for f in PHRASINGS]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """An untrained tiny model exported to disk, and the benchmark's images and captions."""
    root = tmp_path_factory.mktemp("eval")
    rng = random.Random(0)
    combos = rng.sample(_combos(), N_IMAGES)
    images = [(1000 + i, png_bytes(draw_sample(*c, 40, rng))) for i, c in enumerate(combos)]
    texts = [(5 * i + j, cap, [1000 + i]) for i, c in enumerate(combos)
             for j, cap in enumerate(_captions_of(c))]
    bert = tiny.write_tiny_bert(root / "bert", [t for _, t, _ in texts] + all_captions())
    vit = write_tiny_image_tower(root / "vit", name="Tiny-ViT-eval")
    cfg = train_config_from_dict(tiny_train_section(root, vit, bert))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    export = export_model(model, load_tokenizer(str(bert), cfg.context_length), root / "export.pt")
    bench = write_chinese_clip_benchmark(root / "bench", "test", images, texts)
    return {"root": root, "export": export, "bench": bench, "images": images, "texts": texts}


def _eval(*args: str) -> int:
    return zhclip(["eval", *args])


def _cn_clip(module: str, *args: str | Path) -> dict:
    """Run one of cn-clip's evaluation scripts as its authors do (python script.py ...)."""
    out = Path(str(args[-1]))
    subprocess.run([sys.executable, "-m", f"cn_clip.eval.{module}", *map(str, args)],
                   check=True, capture_output=True)
    return json.loads(out.read_text(encoding="utf-8")) if out.suffix == ".json" else {}


# ---- the recall rule on features with a known answer -----------------------------------


def test_several_captions_per_image_hand_computed():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    txt = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-0.8, 0.6], [0.8, -0.6]])
    gt = [[0], [0], [1], [1, 2], [2]]
    # text x image similarities, by hand:
    #   t0 [ 1.0,  0.0, -1.0] gt {0}:   best 1.0, no wrong image at or above   -> rank 0
    #   t1 [ 0.6,  0.8, -0.6] gt {0}:   i1 (0.8) is above                      -> rank 1
    #   t2 [ 0.0,  1.0,  0.0] gt {1}                                           -> rank 0
    #   t3 [-0.8,  0.6,  0.8] gt {1,2}: the second correct image is best     -> rank 0
    #   t4 [ 0.8, -0.6, -0.8] gt {2}:   i0 and i1 above                        -> rank 2
    assert ranks(txt, img, gt, chunk=2).tolist() == [0, 1, 0, 0, 2]
    # image -> text, the captions of i0 are t0,t1; of i1 t2,t3; of i2 t3,t4:
    #   i0 [1.0, 0.6, 0.0, -0.8, 0.8]: best 1.0 -> 0;  i1 [0, .8, 1, .6, -.6]: best 1.0 -> 0
    #   i2 [-1, -.6, 0, .8, -.8]: best 0.8 (t3), nothing wrong above -> 0
    m = retrieval_metrics(img, txt, gt, chunk=1)
    assert m["t2i_r1"] == pytest.approx(60.0) and m["t2i_r5"] == pytest.approx(100.0)
    assert m["i2t_r1"] == m["i2t_r5"] == m["i2t_r10"] == pytest.approx(100.0)
    assert m["mean_recall"] == pytest.approx((60 + 100 + 100 + 300) / 6)
    assert (m["n_images"], m["n_texts"]) == (3, 5)


def test_collapsed_model_scores_zero_not_one_hundred():
    same = F.normalize(torch.ones(50, 8), dim=-1)
    m = retrieval_metrics(same, same.clone())
    assert all(m[k] == 0.0 for k in m if k.startswith(("t2i", "i2t")))  # strictly-higher gave 100


def test_an_image_no_caption_describes_is_a_distractor_not_a_query():
    img = torch.eye(3)
    txt = torch.eye(3)[:2]
    m = retrieval_metrics(img, txt, [[0], [1]])
    assert m["t2i_r1"] == m["i2t_r1"] == 100.0  # i2 is no i2t query (it would score 0)
    txt_confused = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    assert retrieval_metrics(img, txt_confused, [[0], [1]])["t2i_r1"] == 50.0  # i2 still competes


def test_blocked_recall_equals_one_block(monkeypatch):
    from zhclip.training import evaluate as ev

    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(40, 8, generator=g), dim=-1)
    txt = F.normalize(img.repeat_interleave(3, dim=0) + torch.randn(120, 8, generator=g), dim=-1)
    gt = [[t // 3] + ([(t // 3 + 1) % 40] if t % 7 == 0 else []) for t in range(120)]
    whole = retrieval_metrics(img, txt, gt)
    monkeypatch.setattr(ev, "MAX_BLOCK", 50)  # one or two query rows a block
    assert retrieval_metrics(img, txt, gt, chunk=4096) == whole
    assert 0 < whole["t2i_r1"] < 100


@pytest.mark.parametrize("bad,word", [(float("nan"), "NaN"), (float("inf"), "infinite")])
def test_nan_or_inf_features_raise(bad, word):
    img = F.normalize(torch.randn(6, 4), dim=-1)
    txt = img.clone()
    txt[3, 1] = bad
    with pytest.raises(ValueError, match=f"text features contain {word}.*row 3"):
        retrieval_metrics(img, txt)
    with pytest.raises(ValueError, match=f"image features contain {word}"):
        classification_metrics(txt, F.normalize(torch.randn(2, 4), dim=-1), [0, 1, 0, 1, 0, 1])


# ---- zhclip eval against cn-clip's evaluation scripts ------------------------------------------


def _reference_predictions(queries: np.ndarray, candidates: np.ndarray, query_ids, cand_ids,
                           qkey: str, ckey: str, path: Path) -> Path:
    """Top-10 lists computed the way cn-clip's make_topk_predictions does: sort by score."""
    with path.open("w", encoding="utf-8") as f:
        for qid, q in zip(query_ids, queries, strict=True):
            scored = sorted(zip(cand_ids, (candidates @ q).tolist(), strict=True),
                            key=lambda x: x[1], reverse=True)[:10]
            f.write(json.dumps({qkey: qid, ckey: [c for c, _ in scored]}) + "\n")
    return path


def test_eval_equals_cn_clip_evaluation_scripts(world, tmp_path):
    out, feats = tmp_path / "metrics.json", tmp_path / "feats"
    assert _eval("--model", str(world["export"]), "--data", str(world["bench"]), "--out", str(out),
                 "--save-features", str(feats), "--batch-size", "7") == 0
    m = json.loads(out.read_text(encoding="utf-8"))
    assert (m["n_images"], m["n_texts"]) == (N_IMAGES, 5 * N_IMAGES)
    assert 0 < m["t2i_r10"] < 100 and 0 < m["i2t_r10"] < 100  # parity must not be vacuous

    # the saved features: L2-normalised, in index.json's row order, and they give the same metrics
    image_f, text_f = np.load(feats / "image_features.npy"), np.load(feats / "text_features.npy")
    np.testing.assert_allclose(np.linalg.norm(image_f, axis=1), 1.0, atol=1e-5)
    index = json.loads((feats / "index.json").read_text(encoding="utf-8"))
    assert index["image_ids"] == [i for i, _ in world["images"]]
    assert index["text_ids"] == [t for t, _, _ in world["texts"]]
    again = retrieval_metrics(torch.from_numpy(image_f), torch.from_numpy(text_f),
                              [[i] for i in range(N_IMAGES) for _ in range(5)])
    assert {k: again[k] for k in again} == {k: m[k] for k in again}

    # text -> image: cn-clip's evaluation.py on zhclip's prediction file and on the reference's
    gt = world["bench"] / "test_texts.jsonl"
    ref_t2i = _reference_predictions(text_f, image_f, index["text_ids"], index["image_ids"],
                                     "text_id", "image_ids", tmp_path / "ref_t2i.jsonl")
    for pred in (feats / "t2i_predictions.jsonl", ref_t2i):
        score = _cn_clip("evaluation", gt, pred, tmp_path / "t2i.json")["scoreJson"]
        assert (score["r1"], score["r5"], score["r10"]) == pytest.approx(
            (m["t2i_r1"], m["t2i_r5"], m["t2i_r10"]), abs=1e-9)

    # image -> text: cn-clip turns the annotation round, then evaluation_tr.py scores it
    shutil.copy(gt, tmp_path / "gt.jsonl")
    _cn_clip("transform_ir_annotation_to_tr", "--input", tmp_path / "gt.jsonl")
    ref_i2t = _reference_predictions(image_f, text_f, index["image_ids"], index["text_ids"],
                                     "image_id", "text_ids", tmp_path / "ref_i2t.jsonl")
    for pred in (feats / "i2t_predictions.jsonl", ref_i2t):
        score = _cn_clip("evaluation_tr", tmp_path / "gt.tr.jsonl", pred, tmp_path / "i2t.json")
        score = score["scoreJson"]
        assert (score["r1"], score["r5"], score["r10"]) == pytest.approx(
            (m["i2t_r1"], m["i2t_r5"], m["i2t_r10"]), abs=1e-9)


def test_benchmark_whose_captions_are_all_the_same_is_at_chance(world, tmp_path):
    texts = [(t, SAME, ids) for t, _, ids in world["texts"]]
    bench = write_chinese_clip_benchmark(tmp_path / "same", "test", world["images"], texts)
    out = tmp_path / "m.json"
    assert _eval("--model", str(world["export"]), "--data", str(bench), "--out", str(out)) == 0
    m = json.loads(out.read_text(encoding="utf-8"))
    # one text embedding ranks the images in one order, so exactly k of the 24 images' captions hit
    for k in (1, 5, 10):
        assert m[f"t2i_r{k}"] == pytest.approx(100 * k / N_IMAGES)
        assert m[f"i2t_r{k}"] == 0.0  # every caption ties; ties count against the image
    assert m["mean_recall"] < 100 * (1 + 5 + 10) / 3 / N_IMAGES


def test_caption_folder_layout_scores_like_the_chinese_clip_layout(world, tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    for image_id, data in world["images"]:
        (folder / f"{image_id}.png").write_bytes(data)
    (folder / "captions.tsv").write_text(
        "".join(f"{ids[0]}.png\t{text}\n" for _, text, ids in world["texts"]), encoding="utf-8")
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert _eval("--model", str(world["export"]), "--data", str(folder), "--out", str(a)) == 0
    assert _eval("--model", str(world["export"]), "--data", str(world["bench"]), "--out", str(b)) == 0
    ma, mb = (json.loads(p.read_text(encoding="utf-8")) for p in (a, b))
    assert ma["format"] == "folder" and mb["format"] == "chinese-clip"
    assert {k: ma[k] for k in ("t2i_r1", "t2i_r5", "i2t_r1", "i2t_r5", "mean_recall")} == pytest.approx(
        {k: mb[k] for k in ("t2i_r1", "t2i_r5", "i2t_r1", "i2t_r5", "mean_recall")}, abs=1e-4)


def test_zhclip_shards_score_as_the_trainer_scores_them(world, tmp_path):
    write_shape_dataset(tmp_path / "dataset", n_train=8, n_val=30, per_shard=16, size=40)
    out = tmp_path / "m.json"
    assert _eval("--model", str(world["export"]), "--data", str(tmp_path / "dataset"),
                 "--out", str(out)) == 0
    m = json.loads(out.read_text(encoding="utf-8"))
    model, tok, transform = load_export(world["export"])
    expected = evaluate(model, eval_loader(list_shards(str(tmp_path / "dataset"), "val"), transform,
                                           tok, 64, 0), torch.device("cpu"))
    assert m["format"] == "shards" and m["n_images"] == 30
    assert {k: m[k] for k in expected} == pytest.approx(expected, abs=1e-4)


def test_broken_benchmarks_and_models_stop_with_a_clear_error(world, tmp_path, capsys):
    export, out = str(world["export"]), str(tmp_path / "m.json")
    bad = write_chinese_clip_benchmark(tmp_path / "bad", "test", world["images"][:3],
                             [(0, "左上的红色圆形", [1000]), (1, "右上的红色圆形", [77])])
    assert _eval("--model", export, "--data", str(bad), "--out", out) == 1
    assert "test_texts.jsonl:2: image_ids [77] are not in test_imgs.tsv" in capsys.readouterr().err
    write_chinese_clip_benchmark(bad, "valid", world["images"][:3], [(0, "左上的红色圆形", [1000])])
    assert _eval("--model", export, "--data", str(bad), "--out", out) == 1
    assert "choose one with --split" in capsys.readouterr().err
    broken = torch.load(world["export"], weights_only=False)
    broken["state_dict"]["text.proj.weight"].fill_(float("nan"))
    torch.save(broken, tmp_path / "nan.pt")
    assert _eval("--model", str(tmp_path / "nan.pt"), "--data", str(world["bench"]), "--out", out) == 1
    assert "text features contain NaN" in capsys.readouterr().err
    assert not Path(out).exists()


# ---- zero-shot classification --------------------------------------------------------------


def test_prompt_ensemble_and_accuracy_on_features_with_a_known_answer():
    # two templates per class; class c's prompts average to the axis e_c
    prompts = torch.tensor([[[1.0, 0.2, 0.0], [1.0, -0.2, 0.0]],
                            [[0.2, 1.0, 0.0], [-0.2, 1.0, 0.0]],
                            [[0.0, 0.3, 1.0], [0.0, -0.3, 1.0]]])
    classes = ensemble(prompts)
    assert torch.allclose(classes, torch.eye(3), atol=1e-6)
    images = torch.tensor([[0.9, 0.1, 0.0], [0.1, 0.2, 0.9], [0.5, 0.6, 0.0], [0.6, 0.5, 0.4]])
    # nearest classes: 0, 2, 1, 0; labels 0, 2, 0, 0 -> top1 3/4; the third ranks its class 2nd
    m = classification_metrics(images, classes, [0, 2, 0, 0])
    assert m["top1"] == 75.0 and m["top5"] == 100.0 and m["chance_top1"] == pytest.approx(100 / 3)
    collapsed = classification_metrics(images, F.normalize(torch.ones(3, 3), dim=-1), [0, 2, 0, 0])
    assert collapsed["top1"] == 0.0  # all classes tie: counted against the image


def _colour_folder(root: Path, per_class: int) -> Path:
    rng = random.Random(1)
    folders = {"blue": "蓝色", "green": "绿色", "red": "红色", "yellow": "黄色"}
    for folder, colour in folders.items():
        (root / folder).mkdir(parents=True)
        for i in range(per_class):
            img = draw_sample(rng.choice(list(PLACES)), colour, rng.choice(SHAPES), 40, rng)
            img.save(root / folder / f"{i}.png")
    (root / "classnames.txt").write_text("\n".join(folders.values()) + "\n", encoding="utf-8")
    return root


def test_zeroshot_untrained_model_is_near_chance(world, tmp_path):
    data = _colour_folder(tmp_path / "colours", per_class=15)
    templates = tmp_path / "templates.txt"
    templates.write_text("".join(f"{p}的{{}}{s}\n" for p in PLACES for s in SHAPES), encoding="utf-8")
    out, feats = tmp_path / "zs.json", tmp_path / "feats"
    assert _eval("--model", str(world["export"]), "--data", str(data), "--task", "zeroshot",
                 "--templates", str(templates), "--out", str(out), "--save-features", str(feats)) == 0
    m = json.loads(out.read_text(encoding="utf-8"))
    assert m["templates"] == 12 and m["n_classes"] == 4 and m["n_images"] == 60
    assert abs(m["top1"] - 25.0) < 20, m
    assert m["top5"] == 100.0  # four classes: every image's class is in its top 5
    index = json.loads((feats / "index.json").read_text(encoding="utf-8"))
    assert index["classnames"] == ["蓝色", "绿色", "红色", "黄色"] and index["labels"][:1] == [0]
    image_f = torch.from_numpy(np.load(feats / "image_features.npy"))
    classes = torch.from_numpy(np.load(feats / "class_features.npy"))
    assert classification_metrics(image_f, classes, index["labels"])["top1"] == m["top1"]
    # the built-in Chinese templates run too; a template without {} is refused
    assert _eval("--model", str(world["export"]), "--data", str(data), "--task", "zeroshot",
                 "--out", str(out)) == 0
    templates.write_text("一张照片\n", encoding="utf-8")
    assert _eval("--model", str(world["export"]), "--data", str(data), "--task", "zeroshot",
                 "--templates", str(templates), "--out", str(out)) == 1


@pytest.mark.slow
def test_zeroshot_after_brief_training_is_far_above_chance(tmp_path):
    """80 steps of the real trainer on the coloured shapes (about 40 s on 2 busy cores)."""
    from zhclip.training.fixtures import write_tiny_bert
    from zhclip.training.runtime import setup_runtime
    from zhclip.training.trainer import train

    write_shape_dataset(tmp_path / "dataset", n_train=256, n_val=8, per_shard=64, size=40)
    vit = write_tiny_image_tower(tmp_path / "vit", name="Tiny-ViT-zs")
    section = tiny_train_section(tmp_path, vit, write_tiny_bert(tmp_path / "bert"),
                                 output=str(tmp_path / "learn"), log_every=1000,
                                 stage1={"steps": 0},
                                 stage2={"steps": 80, "batch_size": 32, "lr": 3e-3, "warmup": 3})
    train(train_config_from_dict(section), setup_runtime("cpu", "fp32"))
    data = _colour_folder(tmp_path / "colours", per_class=15)
    templates = tmp_path / "templates.txt"  # the class name in every place/shape phrasing, averaged
    templates.write_text("".join(f"{p}的{{}}{s}\n" for p in PLACES for s in SHAPES), encoding="utf-8")
    out = tmp_path / "zs.json"
    assert _eval("--model", str(tmp_path / "learn" / "export.pt"), "--data", str(data),
                 "--task", "zeroshot", "--templates", str(templates), "--out", str(out)) == 0
    m = json.loads(out.read_text(encoding="utf-8"))
    assert m["top1"] > 2 * m["chance_top1"], m  # 75 when measured; chance 25
    # the last training checkpoint is accepted as --model and holds the same weights
    from zhclip.training.checkpoint import list_checkpoints

    ckpt = list_checkpoints(tmp_path / "learn" / "checkpoints")[-1][1]
    assert _eval("--model", str(ckpt), "--data", str(data), "--task", "zeroshot",
                 "--templates", str(templates), "--out", str(tmp_path / "ck.json")) == 0
    assert json.loads((tmp_path / "ck.json").read_text(encoding="utf-8"))["top1"] == m["top1"]
