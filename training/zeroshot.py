"""Zero-shot classification: class names turned into text classifiers by prompt ensembling.

Each class name is written into every template, the captions are embedded and
L2-normalised, averaged, and normalised again (CLIP's prompt ensembling); an
image's class is the one whose ensembled embedding is nearest. Accuracy uses
the same rule as retrieval recall: a tie with a wrong class counts against the
image, so a model that maps everything to one point scores 0, not 100.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from zhclip.training.evaluate import check_finite, embed_captions, ranks, recall_at

PLACEHOLDER = "{}"
# Written for zhclip: plain photo captions in the register of web alt text.
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "{}",
    "{}的照片",
    "一张{}的照片",
    "一张{}的图片",
    "{}的特写照片",
    "一张模糊的{}的照片",
    "一张清晰的{}的照片",
    "{}的高清图片",
    "一幅{}的画",
    "一张小的{}的照片",
    "一张大的{}的照片",
    "这是{}",
)


class TemplateError(ValueError):
    """A prompt-template file that cannot be used."""


def read_templates(path: str | Path) -> list[str]:
    """One template a line, each with one ``{}`` where the class name goes."""
    p = Path(path)
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not lines:
        raise TemplateError(f"{p}: no templates")
    for n, line in enumerate(lines, 1):
        if line.count(PLACEHOLDER) != 1:
            raise TemplateError(f"{p}: template {n} {line!r} needs exactly one {PLACEHOLDER}")
    return lines


def prompts(classname: str, templates: Sequence[str]) -> list[str]:
    return [t.replace(PLACEHOLDER, classname) for t in templates]


def ensemble(class_prompt_features: torch.Tensor) -> torch.Tensor:
    """[C, T, D] prompt features -> [C, D]: normalise, average over templates, normalise."""
    return F.normalize(F.normalize(class_prompt_features, dim=-1).mean(dim=1), dim=-1)


@torch.no_grad()
def class_features(model, tokenizer, classnames: Sequence[str], templates: Sequence[str],
                   device: str | torch.device = "cpu", batch_size: int = 256) -> torch.Tensor:
    """The [C, D] zero-shot classifier of ``classnames`` under ``templates``."""
    texts = [p for name in classnames for p in prompts(name, templates)]
    feats = embed_captions(model, tokenizer, texts, device, batch_size)
    out = feats.reshape(len(classnames), len(templates), -1)
    check_finite("class prompt", out.reshape(len(texts), -1))
    return ensemble(out)


def classification_metrics(image_features: torch.Tensor, classes: torch.Tensor,
                           labels: Sequence[int]) -> dict[str, float]:
    """top1 / top5 accuracy (percent) of nearest-class prediction, ties against the image."""
    check_finite("image", image_features)
    check_finite("class", classes)
    if image_features.shape[0] != len(labels):
        raise ValueError(f"{image_features.shape[0]} image features for {len(labels)} labels")
    rank = ranks(F.normalize(image_features, dim=-1), classes, [[int(y)] for y in labels])
    acc = recall_at(rank, (1, 5))
    return {"top1": acc[1], "top5": acc[5], "n_images": float(len(labels)),
            "n_classes": float(classes.shape[0]), "chance_top1": 100.0 / classes.shape[0]}
