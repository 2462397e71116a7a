"""Model pieces: towers from disk, BN freezing, decay groups, pos-embed interpolation, export."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image
from zhclip.pipeline.core.config import ConfigError
from zhclip.training.config import (
    STAGE2_BATCH,
    StageConfig,
    fill_stage_defaults,
    train_config_from_dict,
)
from zhclip.training.evaluate import embed_captions as embed_texts
from zhclip.training.evaluate import embed_image_stream as embed_images
from zhclip.training.export import export_model, load_export
from zhclip.training.fixtures import (  # noqa: E402
    TINY_RN,
    tiny_train_section,
    write_tiny_bert,
    write_tiny_image_tower,
)
from zhclip.training.model import (
    LOGIT_SCALE_MAX,
    PAIRINGS,
    FrozenBatchNorm2d,
    build_model,
    interpolate_pos_embed,
)
from zhclip.training.optim import cosine_with_warmup, decays, make_optimizer, param_groups
from zhclip.training.tokenizer import load_tokenizer

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    root = tmp_path_factory.mktemp("towers")
    return {
        "root": root,
        # a temperature that is not CLIP's fresh ln(1/0.07), so loading it is visible
        "vit": write_tiny_image_tower(root / "vit", name="Tiny-ViT-m", logit_scale=math.log(30.0)),
        "rn": write_tiny_image_tower(root / "rn", name="Tiny-RN-m", cfg=TINY_RN),
        "bert": write_tiny_bert(root / "bert"),
    }


def _model(towers, kind="vit", **over):
    section = tiny_train_section(towers["root"], towers[kind], towers["bert"], **over)
    torch.manual_seed(0)
    return build_model(train_config_from_dict(section))


def test_towers_load_weights_from_disk(towers):
    import open_clip

    model = _model(towers)
    saved = torch.load(towers["vit"]["pretrained"])
    assert torch.equal(model.image.conv1.weight, saved["visual.conv1.weight"])
    from transformers import BertModel

    bert = BertModel.from_pretrained(str(towers["bert"]), add_pooling_layer=False)
    assert torch.equal(model.text.bert.embeddings.word_embeddings.weight,
                       bert.embeddings.word_embeddings.weight)
    assert model.text.bert.pooler is None  # pooler discarded
    assert model.text.proj.weight.shape == (32, 32)
    assert model.logit_scale.item() == pytest.approx(math.log(30.0))  # the checkpoint's
    assert "Tiny-ViT-m" in open_clip.list_models()


def test_unknown_towers_are_config_errors(towers):
    with pytest.raises(ConfigError, match="not an open_clip model name"):
        _model(towers, image={"model": "No-Such-ViT"})
    with pytest.raises(ConfigError, match="train.text.model"):
        _model(towers, text={"model": str(towers["root"] / "missing")})
    with pytest.raises(ConfigError, match="unknown key 'train.stage1.lrr'"):
        train_config_from_dict({"pairing": "RN50-RBT3", "stage1": {"lrr": 1}})
    with pytest.raises(ConfigError, match="train.pairing"):
        build_model(train_config_from_dict({"pairing": "ViT-Z-99"}))


def test_pairings_and_table8_defaults():
    assert set(PAIRINGS) == {"RN50-RBT3", "ViT-B-16-RoBERTa-base", "ViT-L-14-RoBERTa-base",
                             "ViT-L-14-336-RoBERTa-base", "ViT-H-14-RoBERTa-large"}
    rn1 = fill_stage_defaults(StageConfig(steps=1), 1, "RN50-quickgelu")
    assert (rn1.lr, rn1.batch_size, rn1.warmup, rn1.weight_decay) == (1e-4, 32768, 5000, 1e-3)
    assert (rn1.beta1, rn1.beta2, rn1.eps) == (0.9, 0.999, 1e-8)
    vit2 = fill_stage_defaults(StageConfig(steps=1), 2, "ViT-L-14-quickgelu")
    assert (vit2.lr, vit2.batch_size, vit2.beta2, vit2.eps) == (2e-5, 4608, 0.98, 1e-6)
    assert STAGE2_BATCH["ViT-H-14"] == 32768
    assert fill_stage_defaults(StageConfig(steps=1, lr=3e-4), 2, "ViT-B-16").lr == 3e-4


def test_frozen_batch_norm_keeps_state_dict_keys_and_values(towers):
    model = _model(towers, "rn")
    before = {k: v.clone() for k, v in model.image.state_dict().items()}
    model.lock_image_tower()
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.image.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.image.modules())
    model.train()
    model(torch.randn(4, 3, 32, 32), *load_tokenizer(str(towers["bert"]), 16)(["左上的红色圆形"] * 4))
    after = model.image.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    model.unlock_image_tower()
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.image.modules())
    assert all(p.requires_grad for p in model.image.parameters())


def test_weight_decay_groups(towers):
    model = _model(towers)
    decay, no_decay = param_groups(model, 1e-3)
    names = {id(p): n for n, p in model.named_parameters()}
    dec = {names[id(p)] for p in decay["params"]}
    nod = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 1e-3 and no_decay["weight_decay"] == 0.0
    assert {"text.proj.weight", "text.bert.embeddings.word_embeddings.weight",
            "image.conv1.weight", "image.proj",
            "text.bert.encoder.layer.0.attention.self.query.weight"} <= dec
    assert {"logit_scale", "image.positional_embedding", "image.class_embedding",
            "text.bert.embeddings.LayerNorm.weight", "image.ln_pre.weight",
            "text.bert.encoder.layer.0.attention.self.query.bias"} <= nod
    assert all(p.ndim >= 2 for p in decay["params"])
    assert not decays("logit_scale", torch.zeros(1, 1))
    # stage 1: the locked image tower is not in the optimizer at all
    model.lock_image_tower()
    opt = make_optimizer(model, StageConfig(steps=10, lr=1e-4, weight_decay=1e-3, beta1=0.9,
                                            beta2=0.98, eps=1e-6))
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not any(id(p) in in_opt for p in model.image.parameters())
    assert all(id(p) in in_opt for p in model.text.parameters())


def test_cosine_schedule_with_warmup():
    assert cosine_with_warmup(0, 10, 110) == pytest.approx(0.1)
    assert cosine_with_warmup(9, 10, 110) == pytest.approx(1.0)
    assert cosine_with_warmup(60, 10, 110) == pytest.approx(0.5)
    assert cosine_with_warmup(110, 10, 110) == pytest.approx(0.0)


def test_logit_scale_is_clamped_at_ln_100(towers):
    model = _model(towers)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    model.clamp_logit_scale()
    assert model.logit_scale.item() == pytest.approx(LOGIT_SCALE_MAX)
    assert model.logit_scale.exp().item() == pytest.approx(100.0)


def test_pos_embed_interpolation_shapes(towers, tmp_path):
    small = _model(towers)
    big_tower = write_tiny_image_tower(tmp_path, name="Tiny-ViT-m48", image_size=48)
    big = _model(towers, image={**big_tower, "pretrained": None})
    sd = {k: v.clone() for k, v in small.state_dict().items()}
    assert interpolate_pos_embed(sd, big)
    new = sd["image.positional_embedding"]
    assert new.shape == big.image.positional_embedding.shape == (37, 64)
    assert torch.equal(new[0], small.image.positional_embedding[0])  # class token kept
    # a constant grid stays constant under interpolation
    sd2 = {"image.positional_embedding": torch.ones(17, 64)}
    interpolate_pos_embed(sd2, big)
    torch.testing.assert_close(sd2["image.positional_embedding"], torch.ones(37, 64))
    assert not interpolate_pos_embed({k: v.clone() for k, v in big.state_dict().items()}, big)


def test_export_round_trip(towers, tmp_path):
    model = _model(towers).eval()
    tok = load_tokenizer(str(towers["bert"]), 16)
    path = export_model(model, tok, tmp_path / "export.pt")
    loaded, tok2, transform = load_export(path, "cpu")
    images = [Image.new("RGB", (50, 40), (200, 20, 20)), Image.new("L", (32, 32), 90)]
    caps = ["左上的红色圆形", "右下的蓝色三角形"]
    a = embed_images(loaded, transform, images)
    b = embed_images(model, transform, images)
    torch.testing.assert_close(a, b)
    t = embed_texts(loaded, tok2, caps)
    torch.testing.assert_close(t, embed_texts(model, tok, caps))
    assert a.shape == t.shape == (2, 32)
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(2))
    assert not loaded.training
    with pytest.raises(ValueError, match="neither a zhclip export"):
        torch.save({"x": 1}, tmp_path / "other.pt")
        load_export(tmp_path / "other.pt")
