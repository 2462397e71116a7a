"""Test material for the exporters: a trained-looking tiny zhclip export on disk.

Every weight is moved off its initial value, so a dropped, renamed or
mis-transposed tensor shows in the features an exported copy computes. The
vocabulary covers the synthetic captions plus both spellings of common Chinese
punctuation (full-width ``，`` and ASCII ``,``), so open_clip's ftfy folding
changes real token ids instead of falling to [UNK] on both sides.
"""

from __future__ import annotations

from pathlib import Path

from zhclip.training import fixtures, tiny

# Captions whose punctuation open_clip's cleaning folds (full-width -> ASCII),
# and their folded spellings, so both are in the vocabulary.
PUNCTUATED = ["左上的红色圆形，很大！", "（右下）蓝色方形：小", "左下的黄色三角形；不是圆形？"]
FOLDED = ["左上的红色圆形,很大!", "(右下)蓝色方形:小", "左下的黄色三角形;不是圆形?"]
# How a benchmark image's several captions are phrased.
PHRASINGS = ("{p}的{c}{s}", "{c}{s}在{p}", "{p}有一个{c}{s}")


def trained_looking(model):
    """Move every weight off its initial value (and the temperature to 3.3), in place;
    returns the model in eval mode. A converter that drops or mis-maps any tensor then
    changes the features."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
        model.logit_scale.fill_(3.3)
    return model.eval()


def write_export(
    root: Path,
    kind: str = "vit",
    quick_gelu: bool = True,
    seed: int = 0,
    context_length: int = 16,
    vocab_extra: list[str] | None = None,
) -> Path:
    """``root/export.pt``: a tiny ViT or ResNet (``kind``) + BERT zhclip export; the
    vocabulary also covers the characters of ``vocab_extra``."""
    import torch
    from zhclip.training.config import train_config_from_dict
    from zhclip.training.export import export_model
    from zhclip.training.model import build_model
    from zhclip.training.tokenizer import load_tokenizer

    cfg = tiny.TINY_RN if kind == "rn" else tiny.TINY_VIT
    image = tiny.write_tiny_image_tower(
        root / kind, name=f"zhclip-Export-{kind}", cfg=cfg, seed=seed
    )
    bert = tiny.write_tiny_bert(
        root / "bert",
        fixtures.all_captions() + PUNCTUATED + FOLDED + list(PHRASINGS) + (vocab_extra or []),
        seed=seed,
    )
    section = fixtures.tiny_train_section(
        root, {**image, "quick_gelu": quick_gelu}, bert, context_length=context_length
    )
    torch.manual_seed(seed)
    model = trained_looking(build_model(train_config_from_dict(section)))
    tokenizer = load_tokenizer(str(bert), context_length)
    return export_model(model, tokenizer, root / "export.pt")


def write_benchmark(
    folder: Path, n_images: int = 12, captions_per_image: int = 2, seed: int = 0
) -> Path:
    """A Chinese-CLIP-layout retrieval set (test split) of synthetic shapes:
    ``captions_per_image`` phrasings of each image's caption."""
    import random

    rng = random.Random(seed)
    combos = rng.sample(
        [(p, c, s) for p in fixtures.PLACES for c in fixtures.COLOURS for s in fixtures.SHAPES],
        n_images,
    )
    images = [
        (100 + i, fixtures.png_bytes(fixtures.draw_sample(*c, 40, rng)))
        for i, c in enumerate(combos)
    ]
    phrasings = PHRASINGS[:captions_per_image]
    texts = [
        (len(phrasings) * i + j, f.format(p=p, c=c, s=s), [100 + i])
        for i, (p, c, s) in enumerate(combos)
        for j, f in enumerate(phrasings)
    ]
    return fixtures.write_chinese_clip_benchmark(folder, "test", images, texts)


def cn_clip_reference_model(checkpoint: Path, spec: dict):
    """cn_clip's own ``CLIP`` class built from the model_configs/ beside ``checkpoint`` and
    loaded from it (strictly) the way its create_model does: the reference side of the
    conversion and fine-tuning parity tests. Returned in training mode."""
    import json

    import torch
    from cn_clip.clip.model import CLIP
    from zhclip.training.convert import CN_CLIP_PREFIX, cn_clip_model_name

    configs = checkpoint.parent / "model_configs"
    info: dict = {}
    for name in cn_clip_model_name(spec):
        info.update(json.loads((configs / f"{name}.json").read_text()))
    model = CLIP(**info)
    state = torch.load(checkpoint, map_location="cpu")["state_dict"]
    if not next(iter(state)).startswith(CN_CLIP_PREFIX):
        raise ValueError(f"{checkpoint}: not a cn_clip checkpoint (keys lack {CN_CLIP_PREFIX!r})")
    model.load_state_dict({k[len(CN_CLIP_PREFIX):]: v for k, v in state.items()}, strict=True)
    return model
