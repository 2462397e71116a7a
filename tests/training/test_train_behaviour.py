"""Behaviour the loss curves do not show: each test here fails under one of the
broken versions of the trainer that once passed the suite (issue 11, item 6).

Scale clamping inside the loop, gradient checkpointing that recomputes, the
plateau check, the pos-embed grid against open_clip's resize, bf16 autocast
reaching the forward, the built optimizer's Table 8 hyperparameters, AutoAugment
in the train transform, and stage 2 starting from the best stage-1 weights.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torchvision import transforms as T
from zhclip.training import trainer as trainer_mod
from zhclip.training.config import train_config_from_dict
from zhclip.training.export import load_export
from zhclip.training.fixtures import (
    TINY_RN,
    tiny_train_section,
    write_shape_dataset,
    write_tiny_bert,
    write_tiny_image_tower,
)
from zhclip.training.model import LOGIT_SCALE_MAX, interpolate_pos_embed
from zhclip.training.runtime import setup_runtime
from zhclip.training.trainer import BEST_STAGE1, Trainer

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("behaviour")
    write_shape_dataset(root / "dataset", n_train=64, n_val=16, per_shard=32, size=40)
    return {
        "root": root,
        "vit": write_tiny_image_tower(root / "vit", name="Tiny-ViT-b"),
        # named RN... so tower_family() sees a ResNet (Adam betas/eps differ)
        "rn": write_tiny_image_tower(root / "rn", name="RN-Tiny-b", cfg=TINY_RN),
        "bert": write_tiny_bert(root / "bert", dropout=0.0),
    }


def _trainer(world, out, kind="vit", precision="fp32", **over) -> Trainer:
    section = tiny_train_section(world["root"], world[kind], world["bert"], output=str(out),
                                 precision=precision, **over)
    return Trainer(train_config_from_dict(section), setup_runtime("cpu", precision))


# ---- the temperature ------------------------------------------------------------


def test_training_loop_clamps_a_logit_scale_above_ln_100(world, tmp_path):
    t = _trainer(world, tmp_path / "clamp", stage1={"steps": 1}, stage2={"steps": 0})
    with torch.no_grad():
        t.model.logit_scale.fill_(5.0)  # exp(5) = 148 > 100
    t.run()
    assert t.model.logit_scale.item() <= LOGIT_SCALE_MAX + 1e-6
    model, _, _ = load_export(tmp_path / "clamp" / "export.pt")
    assert model.logit_scale.exp().item() == pytest.approx(100.0, rel=1e-4)


# ---- gradient checkpointing ------------------------------------------------------


def _forward_calls_in_one_step(t: Trainer) -> dict[str, int]:
    """How often one image block and one text layer run forward during one step."""
    t._enter_stage(2)  # both towers train, so both are checkpointed
    calls = {"image": 0, "text": 0}
    blocks = {"image": t.model.image.transformer.resblocks[0],
              "text": t.model.text.bert.encoder.layer[0]}
    # pre-hooks: non-reentrant recomputation stops early, before a block's forward returns
    hooks = [m.register_forward_pre_hook(lambda *_, k=k: calls.__setitem__(k, calls[k] + 1))
             for k, m in blocks.items()]
    try:
        t._step(next(t.batches))
    finally:
        for h in hooks:
            h.remove()
    return calls


def test_grad_checkpointing_recomputes_blocks_during_backward(world, tmp_path):
    plain = _forward_calls_in_one_step(_trainer(world, tmp_path / "plain"))
    assert plain == {"image": 1, "text": 1}
    ckpt = _forward_calls_in_one_step(_trainer(world, tmp_path / "ckpt", grad_checkpointing=True))
    assert ckpt == {"image": 2, "text": 2}  # forward, then again in backward


# ---- the plateau check and the stage switch ----------------------------------------


def test_an_improving_stage1_continues_and_a_flat_one_switches(world, tmp_path):
    t = _trainer(world, tmp_path / "plateau",
                 stage1={"steps": 100, "plateau_patience": 2, "plateau_delta": 0.5})
    for step, recall in enumerate([10.0, 20.0, 30.0, 40.0], start=1):
        t.state.step = step
        assert not t._plateaued({"mean_recall": recall}), f"switched while improving at {recall}"
    assert (t.state.best_recall, t.state.best_step, t.state.evals_without_gain) == (40.0, 4, 0)
    t.state.step = 5
    assert not t._plateaued({"mean_recall": 40.3})  # within plateau_delta: no gain, patience 1
    t.state.step = 6
    assert t._plateaued({"mean_recall": 40.4})  # second eval without a salient gain
    assert t.state.best_step == 4


def test_stage2_resumes_from_the_best_stage1_checkpoint_and_says_so(world, tmp_path, monkeypatch,
                                                                  caplog):
    scripted = iter([50.0, 40.0, 30.0, 20.0, 10.0])
    monkeypatch.setattr(trainer_mod, "evaluate",
                        lambda *a, **k: {"mean_recall": next(scripted)})
    out = tmp_path / "best"
    t = _trainer(world, out, eval_every=1, save_every=1,
                 stage1={"steps": 20, "plateau_patience": 2}, stage2={"steps": 1})
    seen = {}
    orig_enter = t._enter_stage

    def enter(index):
        if index == 2:
            seen["text"] = {k: v.clone() for k, v in t.model.text.state_dict().items()}
        orig_enter(index)

    t._enter_stage = enter
    with caplog.at_level(logging.INFO, logger="zhclip.training.trainer"):
        result = t.run()
    assert result["switched_at"] == 3  # 50 at step 1, then two evals without a gain
    best = torch.load(out / BEST_STAGE1, weights_only=True)
    assert best["step"] == 1 and best["mean_recall"] == 50.0
    # stage 2 began with step 1's weights, not step 3's
    step1 = {k.removeprefix("text."): v for k, v in best["model"].items() if k.startswith("text.")}
    assert all(torch.equal(seen["text"][k], step1[k]) for k in seen["text"])
    step3 = torch.load(out / "checkpoints" / "step-00000003.pt", weights_only=False)
    # the checkpoint taken at the switch holds the restored weights
    assert torch.equal(step3["model"]["text.proj.weight"], best["model"]["text.proj.weight"])
    assert any("resumes from the best stage-1 checkpoint: step 1" in r.getMessage()
               for r in caplog.records)


# ---- pos-embed interpolation -----------------------------------------------------


def test_pos_embed_grid_matches_open_clip_resize(world, tmp_path):
    import open_clip

    small = _trainer(world, tmp_path / "s").model
    big_tower = write_tiny_image_tower(tmp_path, name="Tiny-ViT-b48", image_size=48)
    big = _trainer(world, tmp_path / "l", image={**big_tower, "pretrained": None},
                   allow_upscale=True).model
    torch.manual_seed(1)
    grid = torch.randn(17, 64)  # 4x4 + class token; no symmetry, so a transpose shows
    ours = {"image.positional_embedding": grid.clone()}
    assert interpolate_pos_embed(ours, big)
    ref = {"visual.positional_embedding": grid.clone()}
    open_clip.model.resize_pos_embed(ref, SimpleNamespace(visual=big.image))
    torch.testing.assert_close(ours["image.positional_embedding"],
                               ref["visual.positional_embedding"], atol=1e-6, rtol=1e-6)
    assert small.image.positional_embedding.shape == (17, 64)


# ---- precision ---------------------------------------------------------------------


def test_bf16_autocast_is_active_inside_the_forward(world, tmp_path):
    t = _trainer(world, tmp_path / "bf16", precision="bf16")
    t._enter_stage(2)
    seen = []

    def record(_module, _inputs, output):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"),
                     output.dtype))

    hooks = [t.model.text.proj.register_forward_hook(record),
             t.model.image.transformer.resblocks[0].mlp.c_fc.register_forward_hook(record)]
    t._step(next(t.batches))
    for h in hooks:
        h.remove()
    assert len(seen) == 2
    assert all(s == (True, torch.bfloat16, torch.bfloat16) for s in seen), seen
    assert t.model.text.proj.weight.dtype == torch.float32  # autocast, not a cast of the weights


# ---- the optimizer ------------------------------------------------------------------


@pytest.mark.parametrize("kind, betas, eps", [("vit", (0.9, 0.98), 1e-6), ("rn", (0.9, 0.999), 1e-8)])
def test_built_optimizer_has_table8_hyperparameters(world, tmp_path, kind, betas, eps):
    # the tiny section sets steps, batch, lr and warmup; the rest is Table 8's
    t = _trainer(world, tmp_path / kind, kind=kind)
    for stage in (1, 2):
        t._enter_stage(stage)
        decay, no_decay = t.optimizer.param_groups
        assert decay["weight_decay"] == pytest.approx(1e-3) and no_decay["weight_decay"] == 0.0
        assert decay["params"] and no_decay["params"]
        for g in (decay, no_decay):
            assert tuple(g["betas"]) == betas and g["eps"] == eps
        t.stages[stage].steps = 0  # nothing else needed from the stage


def test_weight_decay_actually_shrinks_a_decayed_weight(world, tmp_path):
    """With zero gradient, AdamW's step is the decay alone: w <- w (1 - lr wd)."""
    t = _trainer(world, tmp_path / "wd", stage1={"weight_decay": 0.5, "lr": 0.1})
    t._enter_stage(1)
    w = t.model.text.proj.weight
    before = w.detach().clone()
    for p in t.model.parameters():
        p.grad = torch.zeros_like(p) if p.requires_grad else None
    t.optimizer.step()
    torch.testing.assert_close(w.detach(), before * (1 - 0.1 * 0.5))


# ---- augmentation -----------------------------------------------------------------------


def test_train_transform_applies_auto_augment_when_enabled(world, tmp_path):
    on = _trainer(world, tmp_path / "aa", data={"auto_augment": True})
    aa = [s for s in on.train_tf.transforms if isinstance(s, T.AutoAugment)]
    assert len(aa) == 1 and aa[0].policy == T.AutoAugmentPolicy.IMAGENET
    off = _trainer(world, tmp_path / "noaa", data={"auto_augment": False})
    assert not any(isinstance(s, T.AutoAugment) for s in off.train_tf.transforms)
    assert not any(isinstance(s, T.AutoAugment) for s in on.eval_tf.transforms)


# ---- evaluation under several ranks -----------------------------------------------------


def test_other_ranks_wait_for_an_evaluation_longer_than_the_group_timeout(tmp_path):
    """Rank 0 evaluates for 6 s; the process group times out after 2 s; rank 1 must
    receive the metrics, not die in the broadcast."""
    import json
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "res"
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "zhclip.training.fixtures", "slow-eval", str(out), "6", "2"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    for rank in (0, 1):
        res = json.loads(Path(f"{out}.{rank}").read_text())
        assert res["got"] == {"mean_recall": 42.0}
    assert json.loads(Path(f"{out}.1").read_text())["waited"] > 5  # it really waited
