"""Both towers attend through torch's scaled_dot_product_attention, and their features (and
gradients) equal the explicit softmax(QK^T)V path's within 1e-5."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from zhclip.training.attention import EAGER, SDPA, set_attention
from zhclip.training.config import train_config_from_dict
from zhclip.training.fixtures import (
    TINY_RN,
    all_captions,
    tiny_train_section,
    write_tiny_bert,
    write_tiny_image_tower,
)
from zhclip.training.loss import ContrastiveLoss
from zhclip.training.model import build_model, model_from_spec
from zhclip.training.tokenizer import load_tokenizer

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdpa")
    return {"root": root, "vit": write_tiny_image_tower(root / "vit", name="Tiny-ViT-sdpa"),
            "rn": write_tiny_image_tower(root / "rn", name="Tiny-RN-sdpa", cfg=TINY_RN),
            "bert": write_tiny_bert(root / "bert", dropout=0.0)}


def _model(towers, kind: str):
    section = tiny_train_section(towers["root"], {**towers[kind], "pretrained": None}, towers["bert"])
    torch.manual_seed(0)
    return build_model(train_config_from_dict(section))


def _inputs(towers):
    torch.manual_seed(1)
    ids, mask = load_tokenizer(str(towers["bert"]), 16)(all_captions()[:6])
    return torch.randn(6, 3, 32, 32), ids, mask


@pytest.fixture()
def sdpa_calls(monkeypatch):
    calls = []
    real = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    return calls


def test_every_attention_layer_of_both_towers_runs_sdpa(towers, sdpa_calls):
    model = _model(towers, "vit").train()
    assert model.text.bert.config._attn_implementation == SDPA
    # a model rebuilt from its spec (export, checkpoint, fine-tune init) too
    rebuilt = model_from_spec(model.spec)
    assert rebuilt.text.bert.config._attn_implementation == SDPA
    images, ids, mask = _inputs(towers)
    model(images, ids, mask)
    vit_layers = len(model.image.transformer.resblocks)
    bert_layers = len(model.text.bert.encoder.layer)
    assert len(sdpa_calls) == vit_layers + bert_layers
    sdpa_calls.clear()
    set_attention(model, EAGER)
    model(images, ids, mask)
    assert sdpa_calls == []  # the comparison path really is another kernel


@pytest.mark.parametrize("kind", ["vit", "rn"])
def test_sdpa_and_eager_give_the_same_features_and_gradients(towers, kind):
    sdpa = _model(towers, kind).train()
    eager = copy.deepcopy(sdpa)
    assert set_attention(eager, EAGER) > 0
    images, ids, mask = _inputs(towers)
    out = {}
    for name, model in (("sdpa", sdpa), ("eager", eager)):
        img, txt, scale = model(images, ids, mask)
        ContrastiveLoss()(img, txt, scale).backward()
        out[name] = (img.detach(), txt.detach(),
                     {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(out["sdpa"][0], out["eager"][0], rtol=0, atol=1e-5)
    torch.testing.assert_close(out["sdpa"][1], out["eager"][1], rtol=0, atol=1e-5)
    assert out["sdpa"][2].keys() == out["eager"][2].keys()
    for n, grad in out["sdpa"][2].items():
        torch.testing.assert_close(grad, out["eager"][2][n], rtol=1e-4, atol=1e-6, msg=n)
    # and back: the switch is reversible
    set_attention(eager, SDPA)
    assert eager.text.bert.config._attn_implementation == SDPA
