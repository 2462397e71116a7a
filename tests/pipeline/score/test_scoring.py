"""Scorers, the M-CLIP loader, the policy rule and the image helpers (no Beam)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from zhclip.filters import images as I
from zhclip.filters.image_rules import threshold_reason
from zhclip.pipeline.core import reasons as RS
from zhclip.pipeline.core.config import ScoreConfig
from zhclip.pipeline.demo.synthetic import ZH_CAPTIONS, make_jpeg
from zhclip.pipeline.score.backends import (
    PrecomputedScorer,
    ScorerError,
    available_backends,
    build_scorer,
)
from zhclip.pipeline.score.tiny_mclip import build_tiny_models

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    return build_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def mclip_scorer(tiny_models):
    return build_scorer(ScoreConfig(**tiny_models, batch_size=4, device="cpu"))


def _pairs(n: int) -> tuple[list[Image.Image], list[str]]:
    imgs = [I.decode_image(make_jpeg(i, size=48 + 8 * (i % 3))) for i in range(n)]
    # Varied lengths so batches are padded differently from one-by-one calls.
    caps = [ZH_CAPTIONS[i % len(ZH_CAPTIONS)] * (1 + i % 3) for i in range(n)]
    return imgs, caps


# --- M-CLIP backend -----------------------------------------------------------------


def test_registry_lists_the_three_backends():
    assert {"mclip", "precomputed", "zhclip"} <= set(available_backends())
    with pytest.raises(ScorerError, match="unknown score backend"):
        build_scorer(type("C", (), {"backend": "nope"})())


def test_tiny_mclip_scores_lie_in_minus_one_one(mclip_scorer):
    imgs, caps = _pairs(10)
    scores = mclip_scorer.score(imgs, caps)
    assert scores.shape == (10,)
    assert np.all(np.isfinite(scores))
    assert np.all((scores >= -1.0) & (scores <= 1.0))
    assert np.ptp(scores) > 1e-4  # different pairs, different scores


def test_batched_scores_equal_one_by_one(mclip_scorer):
    imgs, caps = _pairs(10)
    batched = mclip_scorer.score(imgs, caps)
    single = np.array([mclip_scorer.score([im], [c])[0] for im, c in zip(imgs, caps, strict=True)])
    np.testing.assert_allclose(batched, single, atol=1e-5, rtol=0)


def test_checkpoint_weights_are_the_ones_loaded(tiny_models):
    """The loader must use the checkpoint's weights, not a fresh init of the base model."""
    from safetensors.torch import load_file
    from zhclip.pipeline.score.mclip import load_mclip_text

    text = load_mclip_text(tiny_models["model"])
    saved = load_file(str(Path(tiny_models["model"]) / "model.safetensors"))
    got = text.model.state_dict()
    for name in ("LinearTransformation.weight", "transformer.embeddings.word_embeddings.weight",
                 "transformer.encoder.layer.1.output.dense.weight"):
        assert np.array_equal(got[name].numpy(), saved[name].numpy()), name
    # Mean pooling over real tokens only: padding a caption in a batch must not change it.
    a = text(["一只猫"]).detach()
    b = text(["一只猫", "两个孩子在公园里踢足球两个孩子在公园里踢足球"]).detach()[:1]
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


def test_checkpoint_that_does_not_fit_its_base_config_is_a_clear_error(tiny_models, tmp_path):
    from zhclip.pipeline.score.mclip import ModelLoadError, load_mclip_text

    src = Path(tiny_models["model"])
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in src.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    base = tmp_path / "base"
    base.mkdir()
    cfg = json.loads((Path(json.loads((src / "config.json").read_text())["modelBase"]) /
                      "config.json").read_text())
    cfg["num_hidden_layers"] = 3  # the weights have 2
    (base / "config.json").write_text(json.dumps(cfg))
    mcfg = json.loads((bad / "config.json").read_text())
    mcfg["modelBase"] = str(base)
    (bad / "config.json").write_text(json.dumps(mcfg))
    with pytest.raises(ModelLoadError, match="do not fit"):
        load_mclip_text(str(bad))
    with pytest.raises(ModelLoadError, match="not a folder|not found|M-CLIP"):
        load_mclip_text(str(tmp_path / "absent"))


def test_known_base_config_builds_xlm_roberta_large_shapes():
    from zhclip.pipeline.score.mclip import base_encoder_config

    cfg = base_encoder_config("xlm-roberta-large", Path("/nonexistent"))
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size) == (1024, 24, 250002)


def test_embedding_dims_must_match(tiny_models, tmp_path):
    from zhclip.pipeline.score.tiny_mclip import build_tiny_open_clip

    other = build_tiny_open_clip(tmp_path / "oc16", embed_dim=16)
    cfg = ScoreConfig(**{**tiny_models, "image_model": f"local-dir:{other}"}, device="cpu")
    with pytest.raises(ScorerError, match="16-d embeddings"):
        build_scorer(cfg)


def test_zhclip_backend_scores_a_model_exported_by_training(tmp_path):
    """`zhclip train`'s export, loaded through the scorer registry, gives its model's cosines."""
    pytest.importorskip("zhclip.training.export")
    import torch
    from zhclip.training.config import train_config_from_dict
    from zhclip.training.evaluate import embed_captions, embed_image_stream
    from zhclip.training.export import export_model, load_export
    from zhclip.training.fixtures import tiny_train_section, write_tiny_bert, write_tiny_image_tower
    from zhclip.training.model import build_model
    from zhclip.training.tokenizer import load_tokenizer

    section = tiny_train_section(tmp_path, write_tiny_image_tower(tmp_path / "vit"),
                                 write_tiny_bert(tmp_path / "bert"))
    torch.manual_seed(0)
    model = build_model(train_config_from_dict(section))
    tok = load_tokenizer(str(tmp_path / "bert"), 16)
    path = export_model(model, tok, tmp_path / "export.pt")

    scorer = build_scorer(ScoreConfig(backend="zhclip", model=str(path), device="cpu", batch_size=3))
    imgs = [I.decode_image(make_jpeg(i, size=40)) for i in range(5)]
    caps = ["左上的红色圆形", "右下的蓝色方形", "左下的黄色三角形", "右上的绿色圆形", "左上的蓝色方形"]
    ours = scorer.score(imgs, caps)

    loaded, tok2, transform = load_export(path, "cpu")
    ref = (embed_image_stream(loaded, transform, imgs) * embed_captions(loaded, tok2, caps)).sum(-1)
    np.testing.assert_allclose(ours, ref.numpy(), atol=1e-4)
    assert np.all(np.abs(ours) <= 1)


# --- precomputed backend and policy ------------------------------------------------------


def test_precomputed_backend_runs_without_torch():
    code = (
        "import sys\n"
        "from zhclip.pipeline.core.config import ScoreConfig\n"
        "from zhclip.pipeline.score.backends import build_scorer\n"
        "s = build_scorer(ScoreConfig(backend='precomputed'))\n"
        "print(s.score([None, None], ['a', 'b'], similarity=[0.3, None]).tolist())\n"
        "print('torch' in sys.modules, s.needs_images)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[0] == "[0.3, nan]"
    assert out[1] == "False False"


def test_precomputed_without_column_gives_nan():
    assert np.isnan(PrecomputedScorer().score([None], ["x"])).all()


@pytest.mark.parametrize(
    ("source", "score", "expected"),
    [
        ("laion_zh", 0.2599, RS.REASON_LOW_SIMILARITY),
        ("laion_zh", 0.26, None),
        ("laion_zh", None, RS.REASON_LOW_SIMILARITY),
        ("laion_zh", float("nan"), RS.REASON_LOW_SIMILARITY),
        ("wukong", -0.9, None),
        ("wukong", None, None),
        (None, 0.0, None),
    ],
)
def test_thresholds_apply_only_to_their_sources(source, score, expected):
    assert threshold_reason(source, score, {"laion_zh": 0.26}) == expected


# --- image helpers --------------------------------------------------------------------------


def test_clip_preprocess_matches_open_clip_eval_transform():
    from open_clip.transform import image_transform

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (97, 161, 3), dtype=np.uint8))
    ref = image_transform(224, is_train=False)(img).numpy()
    ours = I.clip_preprocess(img, 224)
    assert ours.shape == ref.shape == (3, 224, 224)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    # The scorers' path: uint8 pixels from the decode thread, normalised per batch.
    pixels = I.clip_pixels(img, 224).transpose(2, 0, 1)
    assert pixels.dtype == np.uint8
    mean = np.asarray(I.OPENAI_MEAN, dtype=np.float32)[:, None, None]
    std = np.asarray(I.OPENAI_STD, dtype=np.float32)[:, None, None]
    np.testing.assert_allclose((pixels.astype(np.float32) / 255 - mean) / std, ref, atol=1e-5)


@pytest.mark.parametrize("data", [b"", b"<html>not an image</html>", make_jpeg(1)[:200]])
def test_undecodable_bytes_raise_decode_error(data):
    with pytest.raises(I.ImageDecodeError):
        I.decode_image(data)


def test_png_is_stored_as_jpeg_and_jpeg_bytes_are_kept():
    jpeg = make_jpeg(3)
    assert I.to_jpeg_bytes(jpeg) == jpeg
    png = make_jpeg(3, fmt="PNG")
    out = I.to_jpeg_bytes(png)
    assert I.is_jpeg(out) and Image.open(io.BytesIO(out)).size == (64, 64)
    assert I.to_jpeg_bytes(png) == out  # deterministic re-encoding


def test_phash_finds_near_duplicates_only():
    a = I.decode_image(make_jpeg(5, size=128))
    resized = a.resize((100, 100))
    other = I.decode_image(make_jpeg(6, size=128))
    index = I.phash_index([I.phash64(a)])
    assert I.min_hamming(I.phash64(resized), index) <= 4
    assert I.min_hamming(I.phash64(other), index) > 10
    assert I.min_hamming(1, I.phash_index([])) == 65
