"""Contrastive loss, recall metrics and their distributed equivalence."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from zhclip.training.config import train_config_from_dict
from zhclip.training.evaluate import ranks_of_pairs, retrieval_metrics
from zhclip.training.fixtures import (  # noqa: E402
    all_captions,
    tiny_train_section,
    write_tiny_bert,
    write_tiny_image_tower,
)
from zhclip.training.loss import ContrastiveLoss
from zhclip.training.model import build_model

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]


def test_recall_matches_hand_computed_example_ties_against_the_query():
    img = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]])
    txt = torch.tensor([[1.0, 0.0], [0.8, 0.6], [-0.6, 0.8], [0.0, 1.0]])
    # similarities, text i (row) x image j (column), worked out by hand:
    #   t0: [ 1.0,  0.6 ,  0.0, -1.0]   own 1.0  -> 0 wrong images at or above
    #   t1: [ 0.8,  0.96,  0.6, -0.8]   own 0.96 -> 0
    #   t2: [-0.6,  0.28,  0.8,  0.6]   own 0.8  -> 0
    #   t3: [ 0.0,  0.8 ,  1.0,  0.0]   own 0.0  -> 3 (the tie with image 0 counts against it)
    # image -> text reads the columns: i0 0, i1 0, i2 1 (t3 = 1.0), i3 1 (t2 = 0.6)
    assert ranks_of_pairs(txt, img, chunk=3).tolist() == [0, 0, 0, 3]
    assert ranks_of_pairs(img, txt, chunk=1).tolist() == [0, 0, 1, 1]
    m = retrieval_metrics(img, txt, chunk=2)
    assert m["t2i_r1"] == pytest.approx(75.0)
    assert m["i2t_r1"] == pytest.approx(50.0)
    assert m["t2i_r5"] == m["t2i_r10"] == m["i2t_r5"] == pytest.approx(100.0)
    assert m["mean_recall"] == pytest.approx((75 + 100 + 100 + 50 + 100 + 100) / 6)
    # R@5 below 100 needs more than 5 candidates: a 7-pair set with one pair ranked 6th
    eye = torch.eye(7)
    shuffled = eye[[0, 1, 2, 3, 4, 5, 6]].clone()
    shuffled[6] = F.normalize(torch.ones(7) - eye[6] * 1.5, dim=0)  # t6 prefers every other image
    m7 = retrieval_metrics(eye, shuffled)
    assert m7["t2i_r1"] == pytest.approx(600 / 7)
    assert m7["t2i_r5"] == pytest.approx(600 / 7)
    assert m7["t2i_r10"] == pytest.approx(100.0)


def test_chunked_recall_equals_unchunked():
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(101, 8, generator=g), dim=-1)
    txt = F.normalize(img + 0.8 * torch.randn(101, 8, generator=g), dim=-1)
    assert retrieval_metrics(img, txt, chunk=7) == retrieval_metrics(img, txt, chunk=1000)


def test_loss_equals_symmetric_cross_entropy():
    g = torch.Generator().manual_seed(1)
    img = F.normalize(torch.randn(6, 4, generator=g), dim=-1)
    txt = F.normalize(torch.randn(6, 4, generator=g), dim=-1)
    scale = torch.tensor(1 / 0.07)
    logits = scale * img @ txt.T
    by_hand = 0.0
    for i in range(6):
        by_hand -= math.log(torch.softmax(logits[i], 0)[i]) / 12
        by_hand -= math.log(torch.softmax(logits[:, i], 0)[i]) / 12
    for local in (False, True):
        assert ContrastiveLoss(local)(img, txt, scale).item() == pytest.approx(by_hand, rel=1e-5)


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    root = tmp_path_factory.mktemp("towers")
    image = write_tiny_image_tower(root / "image", name="Tiny-ViT-loss")
    bert = write_tiny_bert(root / "bert", dropout=0.0)
    return root, image, bert


@pytest.mark.parametrize("mode", ["global", pytest.param("local", marks=pytest.mark.slow)])
def test_two_process_gloo_equals_one_process(towers, tmp_path, mode):
    root, image, bert = towers
    section = tiny_train_section(root, image, bert)
    (tmp_path / "cfg.json").write_text(json.dumps(section), encoding="utf-8")
    from zhclip.training.tokenizer import load_tokenizer

    tok = load_tokenizer(str(bert), 16)
    caps = all_captions()[:8]
    ids, mask = tok(caps)
    g = torch.Generator().manual_seed(3)
    batch = {"images": torch.randn(8, 3, 32, 32, generator=g), "input_ids": ids,
             "attention_mask": mask}
    torch.save(batch, tmp_path / "batch.pt")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(29500 + os.getpid() % 1000), "-m", "zhclip.training.fixtures",
           "ddp-grads", str(tmp_path / "cfg.json"), str(tmp_path / "batch.pt"),
           str(tmp_path / "out"), mode]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]

    torch.manual_seed(0)
    model = build_model(train_config_from_dict(section))
    model.unlock_image_tower()
    model.train()
    img, txt, scale = model(batch["images"], ids, mask)
    loss = ContrastiveLoss()(img, txt, scale)
    loss.backward()
    ranks = [torch.load(tmp_path / f"out.{r}") for r in range(2)]
    if mode == "global":
        for r in ranks:  # every rank computes the loss of the whole global batch
            assert r["loss"] == pytest.approx(loss.item(), rel=1e-5)
    else:  # local rows only: the mean over ranks is the global loss
        assert (ranks[0]["loss"] + ranks[1]["loss"]) / 2 == pytest.approx(loss.item(), rel=1e-5)
    grads = ranks[0]["grads"]
    checked = 0
    for name, p in model.named_parameters():
        assert name in grads, f"{name} got no gradient under DDP"
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
        torch.testing.assert_close(ranks[1]["grads"][name], p.grad, rtol=1e-4, atol=1e-6)
        checked += 1
    assert checked > 20 and any(n.startswith("image.") for n in grads)
