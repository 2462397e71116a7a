"""Init faithful to the references: OpenAI TorchScript archives, the checkpoint's
temperature, Chinese-CLIP's context length and quote handling, and no silent
upscaling of a corpus smaller than the model's input."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from zhclip.training.config import train_config_from_dict
from zhclip.training.data import corpus_resolution
from zhclip.training.fixtures import (
    tiny_train_section,
    write_shape_dataset,
    write_tiny_bert,
    write_tiny_image_tower,
)
from zhclip.training.model import LOGIT_SCALE_INIT, build_model
from zhclip.training.runtime import setup_runtime
from zhclip.training.tiny import write_tiny_openai_archive
from zhclip.training.tokenizer import load_tokenizer
from zhclip.training.trainer import Trainer, TrainingError

torch.set_num_threads(1)

# OpenAI's builder infers heads as width // 64, so the towers are 64 wide
OPENAI_TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 64},
    "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 64, "heads": 1, "layers": 1},
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("init")
    write_shape_dataset(root / "dataset", n_train=32, n_val=8, per_shard=16, size=40)
    return {"root": root, "bert": write_tiny_bert(root / "bert")}


def _section(world, image, **over):
    return tiny_train_section(world["root"], image, world["bert"], **over)


def test_openai_torchscript_archive_loads_with_its_temperature(world):
    import open_clip

    image = write_tiny_openai_archive(world["root"] / "oai", name="Tiny-OAI-i", cfg=OPENAI_TINY)
    with pytest.raises(RuntimeError, match="TorchScript"):  # what open_clip's loader hits
        torch.load(image["pretrained"], weights_only=True)
    torch.manual_seed(0)
    model = build_model(train_config_from_dict(_section(world, image))).eval()
    # the reference: open_clip's own OpenAI loader on the same archive
    ref = open_clip.load_openai_model(image["pretrained"], precision="fp32", device="cpu").eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(x, normalize=False), ref.encode_image(x),
                                   atol=1e-5, rtol=1e-5)
    assert model.spec["image"]["quick_gelu"]
    # OpenAI's temperature (ln 100, stored in float16), not CLIP's fresh ln(1/0.07)
    assert model.logit_scale.item() == pytest.approx(ref.logit_scale.item(), abs=1e-6)
    assert model.logit_scale.item() == pytest.approx(math.log(100), abs=2e-3)


def test_logit_scale_starts_from_the_image_checkpoint_else_the_default(world):
    image = write_tiny_image_tower(world["root"] / "t42", name="Tiny-ViT-i42",
                                   logit_scale=math.log(42.0))
    model = build_model(train_config_from_dict(_section(world, image)))
    assert model.logit_scale.item() == pytest.approx(math.log(42.0))
    fresh = build_model(train_config_from_dict(_section(world, {**image, "pretrained": None})))
    assert fresh.logit_scale.item() == pytest.approx(LOGIT_SCALE_INIT)


def test_default_context_length_keeps_a_50_character_caption(world):
    cfg = train_config_from_dict({"pairing": "RN50-RBT3"})
    assert cfg.context_length == 52
    tok = load_tokenizer(str(world["bert"]), cfg.context_length)
    caption = ("左上的红色圆形右下的蓝色方形" * 4)[:50]
    ids, mask = tok([caption])
    tokens = tok.tokenizer.convert_ids_to_tokens(ids[0].tolist())
    assert tokens == ["[CLS]", *caption, "[SEP]"] and mask.sum() == 52


def test_curly_quotes_are_normalised_as_chinese_clip_does():
    cn_utils = pytest.importorskip("cn_clip.clip.utils")
    vocab = Path(cn_utils.__file__).with_name("vocab.txt")
    ours = load_tokenizer(str(vocab))
    caption = "他说“你好”，ABC"
    # cn_clip/{training,eval}/data.py feed tokenize() with _preprocess_text(text):
    # text.lower().replace("“", '"').replace("”", '"')
    expected = cn_utils.tokenize([caption.lower().replace("“", '"').replace("”", '"')])
    ids, _ = ours([caption])
    assert torch.equal(ids, expected)
    assert ours.tokenizer.unk_token_id not in ids[0].tolist()
    assert cn_utils.tokenize([caption])[0].tolist().count(100) == 2  # raw curly quotes: [UNK]


def test_a_model_larger_than_the_corpus_images_is_an_error_unless_forced(world):
    assert corpus_resolution(str(world["root"] / "dataset")) == 40
    big = write_tiny_image_tower(world["root"] / "t48", name="Tiny-ViT-i48", image_size=48)
    rt = setup_runtime("cpu", "fp32")
    with pytest.raises(TrainingError, match=r"48px images but the corpus's are 40px"):
        Trainer(train_config_from_dict(_section(world, big, output=str(world["root"] / "a"))), rt)
    Trainer(train_config_from_dict(_section(world, big, output=str(world["root"] / "b"),
                                            allow_upscale=True)), rt)
    # the config may name the corpus's resolution (e.g. a corpus without sidecars)
    Trainer(train_config_from_dict(_section(world, big, output=str(world["root"] / "c"),
                                            data={"resolution": 64})), rt)
    with pytest.raises(TrainingError, match="upscale"):
        Trainer(train_config_from_dict(_section(world, big, output=str(world["root"] / "d"),
                                                data={"resolution": 32})), rt)
    small = write_tiny_image_tower(world["root"] / "t32", name="Tiny-ViT-i32")
    Trainer(train_config_from_dict(_section(world, small, output=str(world["root"] / "e"))), rt)


def test_openai_weights_build_a_quick_gelu_tower_under_a_plain_config_name(world):
    """`ViT-B-16` + OpenAI weights: the config name says nn.GELU, the weights QuickGELU.

    The weights must win (as for the mclip scorer), else every feature is computed
    on a shifted model: the tower must equal open_clip's own OpenAI loader."""
    import json

    import open_clip

    image = write_tiny_openai_archive(world["root"] / "oai-plain", name="Tiny-OAI-q", cfg=OPENAI_TINY)
    cfg = json.loads(Path(image["config_file"]).read_text(encoding="utf-8"))
    cfg.pop("quick_gelu", None)  # what open_clip's plain (non "-quickgelu") names look like
    plain = Path(image["config_file"]).with_name("Tiny-OAI-plain.json")
    plain.write_text(json.dumps(cfg), encoding="utf-8")
    image = {**image, "model": "Tiny-OAI-plain", "config_file": str(plain)}
    torch.manual_seed(0)
    model = build_model(train_config_from_dict(_section(world, image))).eval()
    assert model.spec["image"]["quick_gelu"]
    ref = open_clip.load_openai_model(image["pretrained"], precision="fp32", device="cpu").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(x, normalize=False), ref.encode_image(x),
                                   atol=1e-5, rtol=1e-5)
