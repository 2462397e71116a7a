"""The mclip scorer's image tower is OpenAI's architecture (QuickGELU), checked
against open_clip's own model built on the same saved weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from zhclip.filters import images as I
from zhclip.pipeline.core.config import ScoreConfig
from zhclip.pipeline.demo.synthetic import make_jpeg
from zhclip.pipeline.score.backends import build_scorer
from zhclip.pipeline.score.mclip import (
    ModelLoadError,
    declared_quick_gelu,
    load_image_tower,
    uses_quick_gelu,
)
from zhclip.pipeline.score.tiny_mclip import build_tiny_models, build_tiny_open_clip

open_clip = pytest.importorskip("open_clip")


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    return build_tiny_models(tmp_path_factory.mktemp("models"))


def _reference_clip(folder: Path, quick_gelu: bool) -> torch.nn.Module:
    """open_clip's CLIP class built straight from the saved config and weights,
    bypassing zhclip and open_clip's factory, with the activation chosen here."""
    from safetensors.torch import load_file

    model_cfg = json.loads((folder / "open_clip_config.json").read_text())["model_cfg"]
    model = open_clip.CLIP(**{**model_cfg, "quick_gelu": quick_gelu})
    model.load_state_dict(load_file(str(folder / "open_clip_model.safetensors")))
    return model.eval()


def _pixels(scorer, n: int = 6) -> torch.Tensor:
    """Normalised NCHW batch exactly as the scorer feeds its image tower."""
    arr = np.stack([scorer.preprocess(I.decode_image(make_jpeg(i, size=40))) for i in range(n)])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(scorer.mean).view(1, -1, 1, 1)
    std = torch.tensor(scorer.std).view(1, -1, 1, 1)
    return (x - mean) / std


def test_scorer_image_embedding_equals_open_clip_quickgelu_model(tiny_models):
    scorer = build_scorer(ScoreConfig(**tiny_models, device="cpu"))
    folder = Path(tiny_models["image_model"].removeprefix("local-dir:"))
    x = _pixels(scorer)
    with torch.inference_mode():
        ours = scorer.image_encoder(x)
        quick = _reference_clip(folder, quick_gelu=True).encode_image(x)
        gelu = _reference_clip(folder, quick_gelu=False).encode_image(x)
    torch.testing.assert_close(ours, quick, atol=1e-5, rtol=0)
    # The same weights in a GELU tower give other embeddings, so the check above
    # would catch a tower that silently went back to nn.GELU.
    assert (ours - gelu).abs().max() > 1e-3


def test_builtin_name_whose_config_says_gelu_is_built_quickgelu(tmp_path):
    """A built-in config without quick_gelu (as open_clip's ViT-B-32) plus a weights
    file: the tower is QuickGELU and equals open_clip's forced-QuickGELU model."""
    cfg = json.loads((build_tiny_open_clip(tmp_path / "oc") / "open_clip_config.json").read_text())
    model_cfg = {k: v for k, v in cfg["model_cfg"].items() if k != "quick_gelu"}
    (tmp_path / "cfgs").mkdir()
    (tmp_path / "cfgs" / "zhclip-tiny-vit.json").write_text(json.dumps(model_cfg))
    open_clip.add_model_config(tmp_path / "cfgs")
    weights = str(tmp_path / "oc" / "open_clip_model.safetensors")
    tower = load_image_tower("zhclip-tiny-vit", weights)
    assert uses_quick_gelu(tower.module)
    plain = open_clip.create_model("zhclip-tiny-vit", pretrained=weights).visual.eval()
    assert not uses_quick_gelu(plain)  # the name's own default really is nn.GELU
    forced = open_clip.create_model("zhclip-tiny-vit", pretrained=weights,
                                    force_quick_gelu=True).visual.eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(tower.module(x), forced(x), atol=1e-5, rtol=0)
        assert (tower.module(x) - plain(x)).abs().max() > 1e-3


def test_open_clip_vit_b_32_config_becomes_openai_architecture():
    tower = load_image_tower("ViT-B-32", "")
    assert uses_quick_gelu(tower.module)
    assert tower.image_size == 224 and tower.embed_dim == 512


def test_weights_declaring_gelu_are_refused(tmp_path):
    folder = build_tiny_open_clip(tmp_path / "gelu")
    cfg_file = folder / "open_clip_config.json"
    cfg = json.loads(cfg_file.read_text())
    del cfg["model_cfg"]["quick_gelu"]  # open_clip's default: nn.GELU
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="trained with nn.GELU.*built with QuickGELU"):
        load_image_tower(f"local-dir:{folder}", "")
    # Asking for the matching activation loads it.
    assert not uses_quick_gelu(load_image_tower(f"local-dir:{folder}", "", quick_gelu=False).module)


def test_quickgelu_folder_refused_by_a_gelu_tower(tmp_path):
    folder = build_tiny_open_clip(tmp_path / "quick")
    with pytest.raises(ModelLoadError, match="trained with QuickGELU.*built with nn.GELU"):
        load_image_tower(f"local-dir:{folder}", "", quick_gelu=False)


def test_pretrained_tags_declare_their_activation_without_network():
    assert declared_quick_gelu("ViT-B-32", "openai") is True
    assert declared_quick_gelu("ViT-B-32", "laion2b_s34b_b79k") is False
    assert declared_quick_gelu("ViT-B-32", "") is None
    # A LAION (GELU) tag is refused before any download is tried.
    with pytest.raises(ModelLoadError, match="trained with nn.GELU"):
        load_image_tower("ViT-B-32", "laion2b_s34b_b79k")


def test_torchscript_archive_counts_as_openai_quickgelu(tmp_path):
    archive = tmp_path / "ViT-B-32.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(archive))
    assert declared_quick_gelu("ViT-B-32", str(archive)) is True
    state = tmp_path / "plain.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), str(state))
    assert declared_quick_gelu("ViT-B-32", str(state)) is None
