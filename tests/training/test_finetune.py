"""`zhclip finetune` end to end on a small Flickr30K-CN-style benchmark (48 train and
24 valid images, 5 captions each, Chinese-CLIP's jsonl + tsv), from a tiny model
converted to a cn_clip checkpoint; cn_clip's own LMDB builder on the same files
gives the same pairs; bad input stops with one line before any step."""

from __future__ import annotations

import json
import pickle
import random
import runpy
import sys
from pathlib import Path

import pytest
import torch
from zhclip.pipeline.cli import main as cli_main
from zhclip.training import tiny
from zhclip.training.config import train_config_from_dict
from zhclip.training.convert import export_to
from zhclip.training.export import export_model, read_weights_file
from zhclip.training.finetune_data import (
    lmdb_split_dir,
    read_lmdb_pairs,
    read_train_pairs,
    read_valid,
)
from zhclip.training.fixtures import (
    COLOURS,
    PLACES,
    SHAPES,
    draw_sample,
    png_bytes,
    tiny_train_section,
    write_chinese_clip_benchmark,
    write_tiny_image_tower,
)
from zhclip.training.model import build_model
from zhclip.training.tokenizer import load_tokenizer

torch.set_num_threads(1)  # the tiny model runs fastest on one thread, and others share the CPUs
TEMPLATES = ("{p}的{c}{s}", "{c}{s}在{p}", "一个{p}的{c}{s}", "图中{p}有{c}{s}", "{p}是一个{c}的{s}")
COMBOS = [(p, c, s) for p in PLACES for c in COLOURS for s in SHAPES]  # 48


def _captions(combo) -> list[str]:
    p, c, s = combo
    return [t.format(p=p, c=c, s=s) for t in TEMPLATES]


def write_benchmark(folder: Path, n_valid: int = 24, seed: int = 0) -> Path:
    """train: one image per combination (48), valid: ``n_valid`` more, 5 captions each."""
    rng = random.Random(seed)
    text_id = 0
    for split, combos, first_id in (("train", COMBOS, 1000), ("valid", COMBOS[::2][:n_valid], 5000)):
        images, texts = [], []
        for k, combo in enumerate(combos):
            image_id = first_id + k
            images.append((image_id, png_bytes(draw_sample(*combo, 40, rng))))
            for caption in _captions(combo):
                texts.append((text_id, caption, [image_id]))
                text_id += 1
        write_chinese_clip_benchmark(folder, split, images, texts)
    return folder


def build_world(root: Path) -> dict[str, Path]:
    """Tiny towers, a pretrained-looking export of them, its cn_clip conversion, the benchmark."""
    captions = [c for combo in COMBOS for c in _captions(combo)]
    bert = tiny.write_tiny_bert(root / "bert", captions, dropout=0.0)
    tower = write_tiny_image_tower(root / "vit", name="Tiny-ViT-ft", cfg={
        "embed_dim": 32, "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
        "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}})
    section = tiny_train_section(root, {**tower, "pretrained": None, "quick_gelu": True}, bert)
    torch.manual_seed(0)
    model = build_model(train_config_from_dict(section))
    with torch.no_grad():  # off its init, as trained weights are: captions embed apart
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    export = export_model(model, load_tokenizer(str(bert), 16), root / "pretrained.pt")
    cn_ckpt = export_to("cn_clip", read_weights_file(export), root / "cn_clip")
    return {"root": root, "bench": write_benchmark(root / "bench"), "export": export,
            "cn_clip": cn_ckpt}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("ft"))


def _finetune(world, out: Path, *extra: str, data: Path | None = None) -> int:
    return cli_main(["finetune", "--init", str(world["cn_clip"]), "--data",
                     str(data or world["bench"]), "--recipe", "flickr30k-cn", "--output", str(out),
                     "--set", "train.finetune.batch_size=24", "--set", "train.finetune.lr=1e-3",
                     "--set", "train.finetune.warmup=2", "--set", "train.finetune.epochs=16",
                     "--set", "train.finetune.augment=false", "--set", "train.finetune.valid_every=50",
                     "--set", "train.finetune.context_length=16", "--set", "train.finetune.workers=0",
                     "--set", "train.finetune.device=cpu", "--set", "train.finetune.precision=fp32",
                     *extra])


def test_finetune_raises_valid_recall_and_its_export_scores_the_same(world, tmp_path, capsys):
    out = tmp_path / "ft"
    assert _finetune(world, out) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["init_format"] == "cn_clip" and result["data_format"] == "chinese-clip"
    assert result["pairs"] == 48 * 5  # every caption of an image is a pair
    assert result["step"] == 16 * 10  # 240 pairs / 24 a step, 16 epochs
    start, best = result["initial_eval"]["mean_recall"], result["eval"]["mean_recall"]
    assert best > start + 15, result["history"]
    # evaluated at the interval and at every epoch's end
    assert [h["step"] for h in result["history"]] == list(range(0, 161, 10))
    assert result["best_step"] == max(result["history"], key=lambda h: h["mean_recall"])["step"]
    assert (out / "best.pt").is_file() and (out / "metrics.csv").is_file()

    metrics = tmp_path / "eval.json"
    assert cli_main(["eval", "--model", str(out / "export.pt"), "--data", str(world["bench"]),
                     "--split", "valid", "--out", str(metrics), "--batch-size", "128"]) == 0
    theirs = json.loads(metrics.read_text())
    for key in ("t2i_r1", "t2i_r5", "i2t_r1", "i2t_r10", "mean_recall"):
        assert theirs[key] == pytest.approx(result["eval"][key], abs=1e-9), key
    # the best checkpoint is a zhclip checkpoint `zhclip eval` and `zhclip export` read too
    assert cli_main(["export", str(out / "best.pt"), "--format", "cn_clip",
                     "--out", str(tmp_path / "cn")]) == 0


def _cn_clip_build_lmdb(data_dir: Path, splits: str) -> None:
    """cn_clip's own build_lmdb_dataset.py, run as its __main__."""
    import cn_clip.preprocess.build_lmdb_dataset as script

    argv = sys.argv
    sys.argv = ["build_lmdb_dataset.py", "--data_dir", str(data_dir), "--splits", splits]
    try:
        runpy.run_path(script.__file__, run_name="__main__")
    finally:
        sys.argv = argv


def test_cn_clip_lmdb_holds_the_same_pairs_and_images_as_jsonl_tsv(world):
    bench = world["bench"]
    _cn_clip_build_lmdb(bench, "train,valid")
    tsv = read_train_pairs(bench, "chinese-clip")
    lmdb = read_train_pairs(bench, "lmdb")
    assert sorted(lmdb.pairs) == sorted(tsv.pairs) and len(lmdb.pairs) == 240
    for image_id in (1000, 1047):
        a, b = tsv.images.get(image_id), lmdb.images.get(image_id)
        assert a.size == b.size and a.tobytes() == b.tobytes()
    valid_tsv, valid_lmdb = read_valid(bench, "chinese-clip"), read_valid(bench, "lmdb")
    assert sorted(valid_lmdb.image_ids) == sorted(valid_tsv.image_ids)
    assert sorted(valid_lmdb.texts) == sorted(valid_tsv.texts)


# ---- bad input: one line, before any step ------------------------------------------------


def _error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1, err
    return err[0]


def test_texts_naming_missing_images_stop_before_a_step(world, tmp_path, capsys):
    bad = write_benchmark(tmp_path / "bad", n_valid=2)
    with (bad / "train_texts.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps({"text_id": 99999, "text": "左上的红色圆形", "image_ids": [77777]}) + "\n")
    assert _finetune(world, tmp_path / "o", data=bad) == 1
    assert "image_ids [77777] are not in train_imgs.tsv" in _error_line(capsys)
    assert not (tmp_path / "o" / "export.pt").exists()


def test_an_empty_split_stops_before_a_step(world, tmp_path, capsys):
    bad = write_benchmark(tmp_path / "empty", n_valid=2)
    (bad / "train_texts.jsonl").write_text("", encoding="utf-8")
    assert _finetune(world, tmp_path / "o", data=bad) == 1
    assert "holds no captions" in _error_line(capsys)


def test_an_lmdb_that_is_not_cn_clips_stops_before_a_step(world, tmp_path, capsys):
    import lmdb

    folder = tmp_path / "notcn"
    for part in ("pairs", "imgs"):
        (folder / "lmdb" / "train" / part).mkdir(parents=True)
        env = lmdb.open(str(folder / "lmdb" / "train" / part), map_size=1 << 20)
        with env.begin(write=True) as txn:
            txn.put(b"0", pickle.dumps({"image": 1, "caption": "x"}))
        env.close()
    assert _finetune(world, tmp_path / "o", data=folder) == 1
    line = _error_line(capsys)
    assert "not an LMDB written by cn_clip" in line and "num_samples" in line


def test_an_unknown_recipe_is_one_line(world, tmp_path, capsys):
    code = cli_main(["finetune", "--init", str(world["export"]), "--data", str(world["bench"]),
                     "--recipe", "flickr30k", "--output", str(tmp_path / "o")])
    assert code != 0
    line = _error_line(capsys)
    assert "unknown fine-tuning recipe 'flickr30k'" in line and "flickr30k-cn" in line


def test_lmdb_split_dir_names_what_it_expected(tmp_path):
    with pytest.raises(ValueError, match="expected lmdb/train/pairs"):
        lmdb_split_dir(tmp_path, "train")
    with pytest.raises(ValueError, match="is not an LMDB written by cn_clip"):
        read_lmdb_pairs(tmp_path)


def test_init_from_each_format_gives_the_same_model(world, tmp_path):
    from zhclip.training.finetune_init import load_init_model

    hf = export_to("hf", read_weights_file(world["export"]), tmp_path / "hf")
    torch.manual_seed(1)
    pixels = torch.randn(2, 3, 32, 32)
    feats = {}
    for name, path in (("zhclip", world["export"]), ("cn_clip", world["cn_clip"]), ("hf", hf)):
        model, tokenizer, fmt = load_init_model(path, 16)
        assert fmt == name
        ids, mask = tokenizer(["左上的红色圆形", "图中右下有蓝色方形"])
        with torch.no_grad():
            feats[name] = model.eval()(pixels, ids, mask)
    for name in ("cn_clip", "hf"):
        for ours, theirs in zip(feats["zhclip"], feats[name], strict=True):
            torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5, msg=name)


def test_zhclip_shards_fine_tune_as_a_users_own_data(world, tmp_path, capsys):
    from zhclip.training.fixtures import write_shape_dataset

    manifest = write_shape_dataset(tmp_path / "mine", n_train=40, n_val=12, per_shard=16)
    assert _finetune(world, tmp_path / "o", "--set", "train.finetune.max_steps=2",
                     data=tmp_path / "mine") == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["data_format"] == "shards" and result["step"] == 2
    assert result["pairs"] == manifest["splits"]["train"]["samples"] == 40
    assert [h["step"] for h in result["history"]] == [0, 2]  # before, and at the last step
    assert (tmp_path / "o" / "export.pt").is_file()
