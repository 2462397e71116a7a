"""Chinese CLIP: an open_clip image tower paired with a Chinese BERT text tower.

The image tower is whatever open_clip builds for a model name (RN50, ViT-B-16,
ViT-L-14, ViT-L-14-336, ViT-H-14, or a config registered from a JSON file), so
OpenAI / LAION weights load through open_clip's own code. The text tower is a
transformers ``BertModel`` without its pooler (Chinese RoBERTa-wwm checkpoints
are BERT-architecture); its [CLS] state goes through a new linear projection.

A model is described by a small JSON-able *spec* (open_clip vision config, BERT
config, embed dim, context length, normalisation) so that checkpoints and
exports rebuild the architecture without reaching any hub.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import zipfile
from dataclasses import dataclass
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import nn
from transformers import BertConfig, BertModel
from transformers.utils import logging as hf_logging
from zhclip.pipeline.core.config import ConfigError
from zhclip.training.attention import SDPA, bert_config
from zhclip.training.config import ImageTowerConfig, TextTowerConfig, TrainConfig

log = logging.getLogger(__name__)

LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = math.log(100.0)


@dataclass(frozen=True)
class Pairing:
    """One row of the paper's Table 1: which towers, from which weights."""

    image_model: str
    image_pretrained: str
    text_model: str


# OpenAI weights were trained with QuickGELU, which open_clip spells as a name suffix.
PAIRINGS: dict[str, Pairing] = {
    "RN50-RBT3": Pairing("RN50-quickgelu", "openai", "hfl/rbt3"),
    "ViT-B-16-RoBERTa-base": Pairing("ViT-B-16-quickgelu", "openai", "hfl/chinese-roberta-wwm-ext"),
    "ViT-L-14-RoBERTa-base": Pairing("ViT-L-14-quickgelu", "openai", "hfl/chinese-roberta-wwm-ext"),
    "ViT-L-14-336-RoBERTa-base": Pairing(
        "ViT-L-14-336-quickgelu", "openai", "hfl/chinese-roberta-wwm-ext"
    ),
    "ViT-H-14-RoBERTa-large": Pairing(
        "ViT-H-14", "laion2b_s32b_b79k", "hfl/chinese-roberta-wwm-ext-large"
    ),
}


def resolve_towers(cfg: TrainConfig) -> tuple[ImageTowerConfig, TextTowerConfig]:
    """Explicit ``image`` / ``text`` settings win over the named pairing's."""
    image, text = cfg.image, cfg.text
    if cfg.pairing is not None:
        if cfg.pairing not in PAIRINGS:
            raise ConfigError(f"train.pairing {cfg.pairing!r} unknown; choose from {sorted(PAIRINGS)}")
        p = PAIRINGS[cfg.pairing]
        image = image or ImageTowerConfig(model=p.image_model, pretrained=p.image_pretrained)
        text = text or TextTowerConfig(model=p.text_model)
    assert image is not None and text is not None
    return image, text


# ---- frozen BatchNorm --------------------------------------------------------


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed affine parameters and running statistics.

    Everything is a buffer, so no optimizer sees it and no forward pass in
    train mode updates it. The buffer names equal BatchNorm2d's (including
    ``num_batches_tracked``), so state dicts load across both stages.
    """

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__()
        n = bn.num_features
        self.num_features = n
        self.eps = bn.eps
        self.register_buffer("weight", bn.weight.detach().clone() if bn.affine else torch.ones(n))
        self.register_buffer("bias", bn.bias.detach().clone() if bn.affine else torch.zeros(n))
        self.register_buffer("running_mean", bn.running_mean.detach().clone())
        self.register_buffer("running_var", bn.running_var.detach().clone())
        self.register_buffer("num_batches_tracked", bn.num_batches_tracked.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=False, eps=self.eps)

    def to_batch_norm(self) -> nn.BatchNorm2d:
        bn = nn.BatchNorm2d(self.num_features, eps=self.eps).to(self.weight.device)
        with torch.no_grad():
            bn.weight.copy_(self.weight)
            bn.bias.copy_(self.bias)
            bn.running_mean.copy_(self.running_mean)
            bn.running_var.copy_(self.running_var)
            bn.num_batches_tracked.copy_(self.num_batches_tracked)
        return bn


def _swap_modules(module: nn.Module, kind: type, convert) -> int:
    swapped = 0
    for name, child in module.named_children():
        if isinstance(child, kind):
            setattr(module, name, convert(child))
            swapped += 1
        else:
            swapped += _swap_modules(child, kind, convert)
    return swapped


def freeze_batch_norm(module: nn.Module) -> int:
    """Replace every BatchNorm2d under ``module`` by FrozenBatchNorm2d; returns how many."""
    return _swap_modules(module, nn.BatchNorm2d, FrozenBatchNorm2d)


def unfreeze_batch_norm(module: nn.Module) -> int:
    """Undo :func:`freeze_batch_norm` (stage 2 trains BN again)."""
    return _swap_modules(module, FrozenBatchNorm2d, lambda m: m.to_batch_norm())


# ---- towers ------------------------------------------------------------------


def _register_config_file(image: ImageTowerConfig) -> None:
    if image.config_file:
        path = image.config_file
        with open(path, encoding="utf-8") as f:
            json.load(f)  # fail here, with the file's name, if it is not JSON
        open_clip.add_model_config(path)


def _has_quick_gelu(module: nn.Module) -> bool:
    return any(isinstance(m, open_clip.transformer.QuickGELU) for m in module.modules())


def is_torchscript_archive(path: str) -> bool:
    """OpenAI's published ``.pt`` files are TorchScript zip archives (``constants.pkl``
    inside), which ``torch.load(weights_only=True)`` refuses; they need ``torch.jit.load``."""
    if not os.path.isfile(path) or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("/constants.pkl") or n == "constants.pkl" for n in zf.namelist())


def read_torchscript_clip(path: str) -> dict[str, torch.Tensor]:
    """The state dict of a TorchScript CLIP archive, on the CPU, in float32."""
    try:
        module = torch.jit.load(path, map_location="cpu")
    except RuntimeError as err:
        raise ConfigError(f"train.image.pretrained {path!r}: not a loadable TorchScript archive "
                          f"({str(err).splitlines()[0]})") from None
    return {k: v.float() if v.is_floating_point() else v for k, v in module.state_dict().items()}


def _visual_from_clip_state(visual: nn.Module, state: dict[str, torch.Tensor], path: str) -> None:
    """Load the ``visual.*`` weights of a full CLIP state dict into an open_clip tower."""
    sub = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    if not sub:
        raise ConfigError(f"train.image.pretrained {path!r}: no visual.* weights in the archive")
    missing, unexpected = visual.load_state_dict(sub, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"train.image.pretrained {path!r} does not fit train.image.model: missing "
            f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")


def _logit_scale_of(value: torch.Tensor | None) -> float:
    """The initialising CLIP's temperature (ln 100 for OpenAI's), else CLIP's ln(1/0.07)."""
    if value is None:
        return LOGIT_SCALE_INIT
    scale = float(value.detach().float().reshape(-1)[0])
    return scale if math.isfinite(scale) else LOGIT_SCALE_INIT


def build_image_tower(image: ImageTowerConfig) -> tuple[nn.Module, dict[str, Any]]:
    """Build (and load, if ``pretrained``) an open_clip vision tower.

    Returns the tower and its spec: the open_clip model config it was built
    from, plus ``logit_scale``, the pretrained CLIP's temperature (Chinese-CLIP
    restores it with the image weights) or ln(1/0.07) without one.
    """
    _register_config_file(image)
    model_cfg = open_clip.get_model_config(image.model)
    if model_cfg is None:
        raise ConfigError(
            f"train.image.model {image.model!r} is not an open_clip model name; "
            "set train.image.config_file to register a config"
        )
    model_cfg = copy.deepcopy(model_cfg)
    # OpenAI's weights (the `openai` tag, or their TorchScript .pt files) were trained
    # with QuickGELU: a plain `ViT-B-16` config name would build nn.GELU and shift every
    # feature, so the weights decide unless the config says otherwise.
    openai_weights = image.pretrained == "openai" or bool(
        image.pretrained and is_torchscript_archive(image.pretrained))
    quick_gelu = bool(image.quick_gelu) if image.quick_gelu is not None else bool(
        model_cfg.get("quick_gelu", False) or openai_weights
    )
    scale = None
    if image.pretrained and is_torchscript_archive(image.pretrained):
        visual = open_clip.model._build_vision_tower(
            model_cfg["embed_dim"], model_cfg["vision_cfg"], quick_gelu=quick_gelu)
        state = read_torchscript_clip(image.pretrained)
        _visual_from_clip_state(visual, state, image.pretrained)
        scale = state.get("logit_scale")
        log.info("image tower from TorchScript archive %s", image.pretrained)
    elif image.pretrained:
        try:
            clip = open_clip.create_model(
                image.model, pretrained=image.pretrained, force_quick_gelu=quick_gelu
            )
        except RuntimeError as err:
            raise ConfigError(f"train.image.pretrained {image.pretrained!r}: {err}") from None
        visual = clip.visual
        scale = getattr(clip, "logit_scale", None)
        del clip
    else:
        visual = open_clip.model._build_vision_tower(
            model_cfg["embed_dim"], model_cfg["vision_cfg"], quick_gelu=quick_gelu
        )
    spec = {
        "name": image.model,
        "embed_dim": model_cfg["embed_dim"],
        "vision_cfg": model_cfg["vision_cfg"],
        "quick_gelu": _has_quick_gelu(visual) or quick_gelu,
        "logit_scale": _logit_scale_of(scale),
    }
    return visual, spec


def image_tower_from_spec(spec: dict[str, Any]) -> nn.Module:
    return open_clip.model._build_vision_tower(
        spec["embed_dim"], copy.deepcopy(spec["vision_cfg"]), quick_gelu=spec["quick_gelu"]
    )


class TextTower(nn.Module):
    """BERT encoder (no pooler) whose [CLS] state is projected to the joint space."""

    def __init__(self, bert: BertModel, embed_dim: int):
        super().__init__()
        self.bert = bert
        hidden = bert.config.hidden_size
        self.proj = nn.Linear(hidden, embed_dim, bias=False)
        nn.init.normal_(self.proj.weight, std=hidden**-0.5)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask)
        return self.proj(out.last_hidden_state[:, 0])


def load_bert(text: TextTowerConfig) -> BertModel:
    """A BertModel from a folder or hub name, with its pooler dropped."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the checkpoint's unused pooler weights are expected
    try:
        # SDPA attention (training.attention): FlashAttention kernels on CUDA
        if text.random_init:
            return BertModel(bert_config(BertConfig.from_pretrained(text.model)),
                             add_pooling_layer=False)
        return BertModel.from_pretrained(text.model, add_pooling_layer=False,
                                         attn_implementation=SDPA)
    except (OSError, ValueError) as err:  # HFValidationError is a ValueError
        raise ConfigError(
            f"train.text.model {text.model!r}: not a local folder or reachable hub name "
            f"({str(err).splitlines()[0]})"
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)


# ---- the joint model ----------------------------------------------------------


class ChineseCLIP(nn.Module):
    """Image tower + text tower + learnable temperature."""

    def __init__(self, image: nn.Module, text: TextTower, spec: dict[str, Any],
                 logit_scale: float = LOGIT_SCALE_INIT):
        super().__init__()
        self.image = image
        self.text = text
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale)))
        self.spec = spec
        self.image_locked = False

    # -- stage control
    def lock_image_tower(self) -> None:
        """Stage 1 (LiT): no image parameter trains, no BN statistic moves."""
        for p in self.image.parameters():
            p.requires_grad_(False)
        freeze_batch_norm(self.image)
        self.image_locked = True
        self.image.eval()

    def unlock_image_tower(self) -> None:
        """Stage 2: everything trains, BatchNorm included."""
        unfreeze_batch_norm(self.image)
        for p in self.image.parameters():
            p.requires_grad_(True)
        self.image_locked = False
        self.image.train(self.training)

    def train(self, mode: bool = True) -> ChineseCLIP:
        super().train(mode)
        if self.image_locked:
            self.image.eval()  # nothing in a locked tower may behave as in training
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.image.set_grad_checkpointing(enable)
        if enable:
            # non-reentrant: works when a block's inputs need no grad and keeps dropout RNG
            self.text.bert.gradient_checkpointing_enable({"use_reentrant": False})
        else:
            self.text.bert.gradient_checkpointing_disable()

    def clamp_logit_scale(self) -> None:
        with torch.no_grad():
            self.logit_scale.clamp_(0, LOGIT_SCALE_MAX)

    # -- encoders
    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        if self.image_locked:
            with torch.no_grad():
                feats = self.image(images)
        else:
            feats = self.image(images)
        return F.normalize(feats, dim=-1) if normalize else feats

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    normalize: bool = True) -> torch.Tensor:
        feats = self.text(input_ids, attention_mask)
        return F.normalize(feats, dim=-1) if normalize else feats

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised image and text features and the temperature exp(logit_scale)."""
        return (self.encode_image(images), self.encode_text(input_ids, attention_mask),
                self.logit_scale.exp())


def _spec(image_spec: dict[str, Any], bert: BertModel, context_length: int) -> dict[str, Any]:
    size = image_spec["vision_cfg"].get("image_size", 224)
    return {
        "image": image_spec,
        "text": {"bert_config": bert.config.to_dict()},
        "embed_dim": image_spec["embed_dim"],
        "context_length": context_length,
        "image_size": size if isinstance(size, int) else int(size[0]),
        "mean": list(OPENAI_DATASET_MEAN),
        "std": list(OPENAI_DATASET_STD),
    }


def build_model(cfg: TrainConfig) -> ChineseCLIP:
    """Build the model a training config asks for, with its pretrained weights."""
    image_cfg, text_cfg = resolve_towers(cfg)
    visual, image_spec = build_image_tower(image_cfg)
    bert = load_bert(text_cfg)
    if cfg.context_length > bert.config.max_position_embeddings:
        raise ConfigError(
            f"train.context_length {cfg.context_length} exceeds the text tower's "
            f"{bert.config.max_position_embeddings} positions"
        )
    spec = _spec(image_spec, bert, cfg.context_length)
    scale = image_spec["logit_scale"]
    log.info("logit scale starts at %.4f (temperature %.2f)", scale, math.exp(scale))
    return ChineseCLIP(visual, TextTower(bert, spec["embed_dim"]), spec, scale)


def model_from_spec(spec: dict[str, Any]) -> ChineseCLIP:
    """Rebuild the architecture (random weights) from a saved spec, offline."""
    visual = image_tower_from_spec(spec["image"])
    bert_cfg = bert_config(BertConfig.from_dict(spec["text"]["bert_config"]))
    bert = BertModel(bert_cfg, add_pooling_layer=False)
    return ChineseCLIP(visual, TextTower(bert, spec["embed_dim"]), copy.deepcopy(spec))


# ---- positional embedding interpolation (224 -> 336) ------------------------

POS_EMBED_KEY = "image.positional_embedding"


def interpolate_pos_embed(state_dict: dict[str, torch.Tensor], model: ChineseCLIP) -> bool:
    """Resize a ViT's positional-embedding grid in ``state_dict`` to ``model``'s.

    ViT-L/14@336 continues from ViT-L/14 at 224: a 16x16 grid of patch
    positions becomes 24x24 by bicubic interpolation; the class token's
    embedding is kept. Returns whether anything was resized.
    """
    old = state_dict.get(POS_EMBED_KEY)
    visual = model.image
    if old is None or not hasattr(visual, "grid_size"):
        return False
    gh, gw = visual.grid_size
    if old.shape[0] == gh * gw + 1:
        return False
    tok, grid = old[:1], old[1:]
    side = int(math.isqrt(grid.shape[0]))
    if side * side != grid.shape[0]:
        raise ValueError(f"positional embedding of {grid.shape[0]} patches is not a square grid")
    grid = grid.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False, antialias=True)
    grid = grid.permute(0, 2, 3, 1).reshape(gh * gw, -1).to(old.dtype)
    state_dict[POS_EMBED_KEY] = torch.cat([tok, grid], dim=0)
    log.info("interpolated image positional embedding %dx%d -> %dx%d", side, side, gh, gw)
    return True


def load_weights(model: ChineseCLIP, state_dict: dict[str, torch.Tensor]) -> None:
    """Load weights, interpolating the image positional embedding if sizes differ."""
    state_dict = dict(state_dict)
    interpolate_pos_embed(state_dict, model)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"weights do not fit the model: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
