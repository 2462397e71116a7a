"""The two-stage trainer end to end on the synthetic shards, and `zhclip train`."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from zhclip.pipeline.cli import main as zhclip
from zhclip.training.checkpoint import list_checkpoints, load_checkpoint
from zhclip.training.config import train_config_from_dict
from zhclip.training.export import export_model, load_export
from zhclip.training.fixtures import (  # noqa: E402
    TINY_RN,
    tiny_train_section,
    write_shape_dataset,
    write_tiny_bert,
    write_tiny_image_tower,
)
from zhclip.training.model import build_model
from zhclip.training.runtime import setup_runtime
from zhclip.training.tokenizer import load_tokenizer
from zhclip.training.trainer import Trainer, TrainingError, train

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
N_VAL = 48
CHANCE = 100 * (1 + 5 + 10) / 3 / N_VAL  # mean recall of random embeddings, about 11.1


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    write_shape_dataset(root / "dataset", n_train=512, n_val=N_VAL, per_shard=128, size=40)
    return {
        "root": root,
        "vit": write_tiny_image_tower(root / "vit", name="Tiny-ViT-t"),
        "rn": write_tiny_image_tower(root / "rn", name="Tiny-RN-t", cfg=TINY_RN),
        "bert": write_tiny_bert(root / "bert"),
        "bert_nodrop": write_tiny_bert(root / "bert0", dropout=0.0),
    }


def _cfg(world, out: Path, kind="vit", bert="bert", **over):
    section = tiny_train_section(world["root"], world[kind], world[bert], output=str(out), **over)
    return train_config_from_dict(section)


def _rt():
    return setup_runtime("cpu", "fp32")


def _losses(out: Path) -> dict[int, float]:
    with (out / "metrics.csv").open(encoding="utf-8") as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f)}


def _evals(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "eval.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def trained(world):
    out = world["root"] / "learn"
    cfg = _cfg(world, out, eval_every=30, log_every=10,
               stage1={"steps": 30, "batch_size": 32, "lr": 2e-3, "warmup": 5},
               stage2={"steps": 150, "batch_size": 32, "lr": 5e-4, "warmup": 5})
    result = train(cfg, _rt())
    return out, result


def test_recall_rises_far_above_chance(trained):
    out, result = trained
    evals = _evals(out)
    assert [e["step"] for e in evals] == [30, 60, 90, 120, 150, 180]
    assert [e["stage"] for e in evals] == [1, 2, 2, 2, 2, 2]
    final = evals[-1]["mean_recall"]
    assert final > 3 * CHANCE, evals
    assert final > evals[0]["mean_recall"] + 15
    assert result["switched_at"] == 30 and result["step"] == 180
    assert result["eval"]["mean_recall"] == pytest.approx(final)


def test_export_serves_the_trained_model(trained, world):
    out, result = trained
    model, tok, transform = load_export(out / "export.pt")
    assert transform.transforms[1].size == (32, 32)
    ckpt = load_checkpoint(list_checkpoints(out / "checkpoints")[-1][1])
    assert ckpt["train_state"]["step"] == 180 and ckpt["train_state"]["stage"] == 3
    assert torch.equal(model.text.proj.weight, ckpt["model"]["text.proj.weight"])


def test_continuing_at_higher_resolution_interpolates_pos_embed(trained, world, tmp_path):
    out, _ = trained
    big = write_tiny_image_tower(tmp_path / "big", name="Tiny-ViT-t48", image_size=48)
    cfg = _cfg(world, tmp_path / "t48", image={**big, "pretrained": None},
               init_from=str(out / "export.pt"), allow_upscale=True,  # 48 px model, 40 px corpus
               stage1={"steps": 0}, stage2={"steps": 2, "batch_size": 16, "lr": 1e-6, "warmup": 0})
    result = train(cfg, _rt())
    # the 6x6-grid model starts from the 4x4 one and still retrieves well at 48 px
    assert result["eval"]["mean_recall"] > 2.5 * CHANCE
    model, _, transform = load_export(tmp_path / "t48" / "export.pt")
    assert model.image.positional_embedding.shape == (37, 64)
    assert transform.transforms[1].size == (48, 48)


def test_stage1_freezes_image_tower_and_stage2_trains_it(world, tmp_path):
    out = tmp_path / "rn"
    cfg = _cfg(world, out, kind="rn", save_every=3, keep_checkpoints=5,
               stage1={"steps": 3, "lr": 1e-2}, stage2={"steps": 3, "lr": 1e-2})
    torch.manual_seed(cfg.seed)
    initial = build_model(cfg).state_dict()
    train(cfg, _rt())
    ckpts = dict(list_checkpoints(out / "checkpoints"))
    after1 = load_checkpoint(ckpts[3])["model"]
    after2 = load_checkpoint(ckpts[6])["model"]
    image_keys = [k for k in initial if k.startswith("image.")]
    assert any("running_mean" in k for k in image_keys) and len(image_keys) > 30
    for k in image_keys:  # every weight and every BN buffer, bit for bit
        assert torch.equal(initial[k], after1[k]), k
    text_keys = [k for k in initial if k.startswith("text.")]
    changed = [k for k in text_keys if not torch.equal(initial[k], after1[k])]
    assert "text.proj.weight" in changed and len(changed) > len(text_keys) // 2
    assert not torch.equal(initial["logit_scale"], after1["logit_scale"])
    moved = [k for k in image_keys if not torch.equal(after1[k], after2[k])]
    assert "image.conv1.weight" in moved
    assert any("running_var" in k for k in moved)  # BN statistics train again in stage 2


@pytest.mark.parametrize("k", [2, 3, 4])
def test_resume_reproduces_the_next_steps(world, tmp_path, k):
    # k=3 is the stage boundary; dropout and AutoAugment are on, so RNG state matters
    over = dict(save_every=1, keep_checkpoints=10, data={"auto_augment": True},
                stage1={"steps": 3}, stage2={"steps": 3})
    full = tmp_path / "full"
    train(_cfg(world, full, **over), _rt())
    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    src = dict(list_checkpoints(full / "checkpoints"))[k]
    shutil.copy(src, part / "checkpoints" / src.name)
    result = train(_cfg(world, part, **over), _rt(), resume="latest")
    assert result["step"] == 6
    a, b = _losses(full), _losses(part)
    assert sorted(b) == [k + 1 + i for i in range(6 - k)]  # only the resumed steps were run
    for step in b:
        assert b[step] == pytest.approx(a[step], rel=1e-6, abs=1e-7), step


def test_grad_checkpointing_and_clipping_train_the_same_model(world, tmp_path):
    over = dict(stage1={"steps": 2}, stage2={"steps": 2})
    train(_cfg(world, tmp_path / "plain", **over), _rt())
    train(_cfg(world, tmp_path / "ckpt", grad_checkpointing=True, **over), _rt())
    plain, ckpt = _losses(tmp_path / "plain"), _losses(tmp_path / "ckpt")
    for step in plain:  # recomputation changes memory, not the numbers
        assert ckpt[step] == pytest.approx(plain[step], rel=1e-5), step
    train(_cfg(world, tmp_path / "clip", grad_clip=1e-3, **over), _rt())
    clipped = _losses(tmp_path / "clip")
    assert clipped[1] == pytest.approx(plain[1], rel=1e-6)  # same first step...
    assert clipped[4] != pytest.approx(plain[4], rel=1e-6)  # ...smaller updates after it


def test_bf16_autocast_trains_on_cpu(world, tmp_path):
    cfg = _cfg(world, tmp_path / "bf16", precision="bf16", stage1={"steps": 1}, stage2={"steps": 1})
    result = train(cfg, setup_runtime("cpu", "bf16"))
    losses = _losses(tmp_path / "bf16")
    assert result["step"] == 2 and all(0 < v < 10 for v in losses.values())
    # weights stay float32 (autocast, not a cast of the model)
    model, _, _ = load_export(tmp_path / "bf16" / "export.pt")
    assert model.text.proj.weight.dtype == torch.float32


def test_plateau_switches_to_stage_2(world, tmp_path):
    cfg = _cfg(world, tmp_path / "p", eval_every=1,
               stage1={"steps": 50, "plateau_patience": 2, "plateau_delta": 1000.0},
               stage2={"steps": 1})
    result = train(cfg, _rt())
    # eval 1 sets no new best (delta too large), eval 2 neither: switch after step 2
    assert result["switched_at"] == 2 and result["step"] == 3


def test_accumulation_keeps_full_batch_gradients(world, tmp_path):
    cfg = _cfg(world, tmp_path / "acc", bert="bert_nodrop", accum_steps=4,
               stage2={"steps": 1, "batch_size": 16})
    t = Trainer(cfg, _rt())
    t._enter_stage(2)
    batch = next(t.batches)
    args = (batch["images"], batch["input_ids"], batch["attention_mask"])
    t.optimizer.zero_grad()
    loss_acc = t.stepper.accumulated_backward(*args, accum=4)
    acc = {n: p.grad.clone() for n, p in t.model.named_parameters()}
    t.optimizer.zero_grad()
    loss = t.loss_fn(*t.model(*args))
    loss.backward()
    assert loss_acc.item() == pytest.approx(loss.item(), rel=1e-5)
    for n, p in t.model.named_parameters():
        torch.testing.assert_close(acc[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)


def test_nan_loss_stops_or_skips_with_a_clear_message(world, tmp_path):
    cfg = _cfg(world, tmp_path / "nan")
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        model.text.proj.weight[0, 0] = float("nan")
    bad = export_model(model, load_tokenizer(str(world["bert"]), 16), tmp_path / "bad.pt")
    with pytest.raises(TrainingError, match=r"non-finite loss at step 1 \(stage 1.*nan_policy: skip"):
        train(_cfg(world, tmp_path / "nan", init_from=str(bad)), _rt())
    with pytest.raises(TrainingError, match="more than 2 non-finite losses"):
        train(_cfg(world, tmp_path / "nan2", init_from=str(bad), nan_policy="skip",
                   max_skipped_steps=2), _rt())


@pytest.mark.parametrize("fmt", ["cn_clip", "hf"])
def test_init_from_takes_cn_clip_and_hf_models(world, tmp_path, fmt):
    """train.init_from reads what `zhclip export` writes: a NaN planted in the source
    model's text projection reaches the trainer's first step, so those weights loaded."""
    from zhclip.training.convert import export_to
    from zhclip.training.export import read_weights_file

    image = {**world["vit"], "quick_gelu": True}  # cn_clip holds QuickGELU ViTs only
    torch.manual_seed(0)
    model = build_model(_cfg(world, tmp_path / "src", image=image))
    with torch.no_grad():
        model.text.proj.weight[0, 0] = float("nan")
    export = export_model(model, load_tokenizer(str(world["bert"]), 16), tmp_path / "bad.pt")
    converted = export_to(fmt, read_weights_file(export), tmp_path / fmt)
    with pytest.raises(TrainingError, match=r"non-finite loss at step 1 \(stage 1"):
        train(_cfg(world, tmp_path / "run", image=image, init_from=str(converted)), _rt())


def _write_config(world, path: Path, out: Path, **over) -> Path:
    section = tiny_train_section(world["root"], world["vit"], world["bert"], **over)
    del section["output"]  # default: OUT/train
    section["data"]["path"] = str(world["root"] / "dataset")
    path.write_text(yaml.safe_dump({"output": str(out), "train": section}, allow_unicode=True),
                    encoding="utf-8")
    return path


def test_zhclip_train_runs_both_stages(world, tmp_path, capsys):
    out = tmp_path / "OUT"
    config = _write_config(world, tmp_path / "c.yaml", out, save_every=2, eval_every=2)
    assert zhclip(["train", "--config", str(config), "--stage2-steps", "2"]) == 0
    train_dir = out / "train"
    steps = [s for s, _ in list_checkpoints(train_dir / "checkpoints")]
    assert steps == [2, 4, 6]  # keep_checkpoints=3 of 2, 4, 6
    rows = list(csv.DictReader((train_dir / "metrics.csv").open(encoding="utf-8")))
    assert [int(r["stage"]) for r in rows] == [1, 1, 1, 1, 2, 2]
    assert all(float(r["samples_per_s"]) > 0 and float(r["lr"]) > 0 for r in rows)
    assert [e["step"] for e in _evals(train_dir)] == [2, 4, 6]
    assert (train_dir / "export.pt").is_file() and (train_dir / "train_config.json").is_file()
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["step"] == 6 and printed["switched_at"] == 4
    # resuming a finished run trains nothing more
    assert zhclip(["train", "--config", str(config), "--stage2-steps", "2", "--resume", "latest"]) == 0
    assert len(list(csv.DictReader((train_dir / "metrics.csv").open(encoding="utf-8")))) == 6
    # config mistakes are one-line errors, exit 2
    assert zhclip(["train", "--config", str(config), "--set", "train.stage1.lrr=1"]) == 2
    assert "unknown key 'train.stage1.lrr'" in capsys.readouterr().err
    assert zhclip(["train", "--config", str(config), "--resume", str(tmp_path / "nope.pt")]) == 2


@pytest.mark.slow
def test_torchrun_two_processes_trains_and_resumes(world, tmp_path):
    out = tmp_path / "OUT"
    config = _write_config(world, tmp_path / "c.yaml", out, save_every=1, eval_every=2,
                           keep_checkpoints=10, stage1={"steps": 2}, stage2={"steps": 2})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(30500 + os.getpid() % 1000), "-m", "zhclip.training.cli",
           "--config", str(config)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    ckpts = dict(list_checkpoints(out / "train" / "checkpoints"))
    ckpt = load_checkpoint(ckpts[4])
    assert len(ckpt["data_position"]) == 2 and len(ckpt["rng"]) == 2
    assert ckpt["train_state"]["step"] == 4
    full = _losses(out / "train")
    assert sorted(full) == [1, 2, 3, 4]  # only rank 0 logs
    # drop the last checkpoint and resume both ranks from step 3 (inside stage 2)
    ckpts[4].unlink()
    run = subprocess.run(cmd + ["--resume", "latest"], env=env, capture_output=True, text=True,
                         timeout=400, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    resumed = _losses(out / "train")
    assert resumed[4] == pytest.approx(full[4], rel=1e-6, abs=1e-7)
