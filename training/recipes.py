"""Fine-tuning recipes: the hyperparameters of Chinese-CLIP's published fine-tuning scripts.

OFA-Sys/Chinese-CLIP ships one script per benchmark (``run_scripts/
{muge,flickr30k,coco-cn}_finetune_vit-b-16_rbt-base.sh``), all on 8 GPUs, all
from ``clip_cn_vit-b-16.pt``. Their ``--batch-size`` is per GPU; a recipe here
holds the *global* batch (per-GPU x 8), because that is what the contrastive loss
sees: every caption is contrasted with every image of the global batch.

Scaling to the devices a user has: the global batch, lr, warmup, epochs and
validation interval stay as published; the batch splits over the N ranks
(``batch_size / N`` each) and, where one rank cannot hold its share, over
``accum_steps`` micro-batches (``batch_size / (N x accum_steps)`` at a time).
Accumulation keeps the whole batch as negatives, so the loss, and the number of
optimizer steps per epoch, are those of the 8-GPU run. Changing ``batch_size``
itself changes the computation; scale lr with it linearly if you do.

``default`` is for a user's own retrieval data: Flickr30K-CN's settings (a
small set, a few epochs), validation every epoch.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from zhclip.pipeline.core.config import ConfigError, format_validation_error

PUBLISHED_GPUS = 8  # every published fine-tuning script runs on one node of 8 GPUs


class Recipe(BaseModel):
    """One fine-tuning run's settings; any of them can be overridden with
    ``--set train.finetune.KEY=VALUE``."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    batch_size: int = Field(ge=1)  # global: all ranks, all micro-batches
    lr: float = Field(gt=0)
    weight_decay: float = Field(0.001, ge=0)
    warmup: int = Field(ge=0)  # optimizer steps of linear warmup, then cosine to 0
    epochs: int = Field(ge=1)
    max_steps: int | None = Field(None, ge=1)  # takes precedence over epochs, as in cn_clip
    context_length: int = Field(52, ge=4)
    augment: bool = True  # cn_clip's --use-augment: RandomResizedCrop(0.9-1) + AutoAugment
    valid_every: int | None = Field(None, ge=1)  # steps between validations; None: none between
    valid_every_epoch: bool = True  # validate at the end of every epoch too
    accum_steps: int = Field(1, ge=1)
    grad_checkpointing: bool = False
    beta1: float = Field(0.9, gt=0, lt=1)
    beta2: float = Field(0.98, gt=0, lt=1)  # cn_clip's ViT default (ResNet: 0.999)
    eps: float = Field(1e-6, gt=0)  # cn_clip's ViT default (ResNet: 1e-8)
    # which weights decay: cn_clip's name rule (its main.py), or zhclip's pretraining rule
    decay_rule: Literal["cn_clip", "clip"] = "cn_clip"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: str = "auto"
    workers: int = Field(2, ge=0)
    eval_batch_size: int = Field(128, ge=1)  # cn_clip's --valid-batch-size
    seed: int = 123  # cn_clip's default --seed
    log_every: int = Field(10, ge=1)


_FLICKR = {"batch_size": 128 * PUBLISHED_GPUS, "lr": 5e-5, "weight_decay": 0.001, "warmup": 100,
           "epochs": 3, "context_length": 52, "valid_every": 150, "augment": True}

RECIPES: dict[str, dict[str, Any]] = {
    # run_scripts/muge_finetune_vit-b-16_rbt-base.sh
    "muge": dict(_FLICKR),
    # run_scripts/flickr30k_finetune_vit-b-16_rbt-base.sh
    "flickr30k-cn": dict(_FLICKR),
    # run_scripts/coco-cn_finetune_vit-b-16_rbt-base.sh (it also turns on grad checkpointing)
    "coco-cn": {"batch_size": 1024 * PUBLISHED_GPUS, "lr": 3e-5, "weight_decay": 0.001,
                "warmup": 6, "epochs": 20, "context_length": 52, "valid_every": None,
                "augment": True, "grad_checkpointing": True},
    "default": {**_FLICKR, "valid_every": None},
}


class RecipeError(ConfigError):
    """An unknown recipe name or an invalid override."""


def resolve_recipe(name: str, overrides: dict[str, Any] | None = None) -> Recipe:
    """The named recipe with the user's ``train.finetune`` overrides applied."""
    if name not in RECIPES:
        raise RecipeError(f"unknown fine-tuning recipe {name!r}; choose one of "
                          f"{', '.join(sorted(RECIPES))}")
    try:
        return Recipe.model_validate({**RECIPES[name], **(overrides or {})})
    except ValidationError as err:
        raise RecipeError(format_validation_error(err, "train.finetune",
                                                  prefix="train.finetune.")) from None


def steps_per_epoch(pairs: int, recipe: Recipe) -> int:
    """Optimizer steps in one epoch, as cn_clip counts them: the pairs are padded up to
    whole global batches (its ``pad_dataset``), so the last batch is full."""
    return -(-pairs // recipe.batch_size)


def total_steps(pairs: int, recipe: Recipe) -> int:
    return recipe.max_steps or steps_per_epoch(pairs, recipe) * recipe.epochs
