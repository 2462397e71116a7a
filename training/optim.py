"""AdamW with the usual CLIP decay groups, and the warmup + cosine schedule.

Weight decay applies only to weights with two or more dimensions (linear and
conv kernels, embedding tables, projections); biases, norm scales, the
positional / class embeddings of a ViT (1-dim or listed by open_clip) and the
logit scale are not decayed. Only parameters that require grad are handed to
the optimizer, which is how stage 1 keeps the image tower out of it.

Fine-tuning can instead use cn_clip's own rule (``decay_rule="cn_clip"``), so a
fine-tune is the same computation as Chinese-CLIP's scripts: its ``main.py``
exempts a weight when its cn_clip name contains ``bn``, ``ln``, ``bias`` or
``logit_scale``; BERT's ``LayerNorm`` scales and the ViT's positional and class
embeddings are therefore decayed there.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from zhclip.training.config import StageConfig
from zhclip.training.convert import cn_clip_name

# Multi-dimensional tensors that are embeddings rather than weights (open_clip's
# no_weight_decay list for its ViT): decaying them pulls positions towards zero.
NO_DECAY_NAMES = ("positional_embedding", "class_embedding")


def decays(name: str, param: torch.Tensor) -> bool:
    """Whether ``param`` (called ``name`` in the model) gets weight decay."""
    if param.ndim < 2 or "logit_scale" in name:
        return False
    return name.split(".")[-1] not in NO_DECAY_NAMES


def cn_clip_decays(name: str, param: torch.Tensor) -> bool:
    """cn_clip main.py's rule, applied to the cn_clip name of zhclip's weight ``name``."""
    theirs = cn_clip_name(name)
    return not any(part in theirs for part in ("bn", "ln", "bias", "logit_scale"))


DECAY_RULES = {"clip": decays, "cn_clip": cn_clip_decays}


def param_groups(model: nn.Module, weight_decay: float, rule: str = "clip") -> list[dict]:
    """Two AdamW groups, decayed and not, of the trainable parameters."""
    decays_fn = DECAY_RULES[rule]
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if decays_fn(name, p) else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(model: nn.Module, stage: StageConfig, decay_rule: str = "clip") -> torch.optim.AdamW:
    # fused kernels only exist for CUDA tensors
    on_cuda = next(model.parameters()).is_cuda
    return torch.optim.AdamW(
        param_groups(model, stage.weight_decay or 0.0, decay_rule),
        lr=stage.lr,
        betas=(stage.beta1, stage.beta2),
        eps=stage.eps,
        fused=on_cuda or None,
    )


def cosine_with_warmup(step: int, warmup: int, total: int) -> float:
    """LR multiplier: linear 0 -> 1 over ``warmup`` steps, then cosine 1 -> 0 at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, stage: StageConfig) -> torch.optim.lr_scheduler.LambdaLR:
    warmup, total = int(stage.warmup or 0), int(stage.steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_with_warmup(step, warmup, total)
    )
