"""Tiny towers built from configs and saved to disk, for the demo and the tests.

No machine here reaches a model hub, so the demo cannot start from OpenAI CLIP
and RoBERTa-wwm. Instead it writes an open_clip model config and a BERT of a
few hundred thousand weights to disk, with a character vocab taken from the
captions, and training loads them by path through the same code as real ones.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

TINY_VIT: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}
TINY_RN: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 64,
                   "patch_size": None},
    "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}


def write_vocab(path: Path, captions: Iterable[str]) -> Path:
    """A WordPiece vocab: BERT's special tokens and every character of ``captions``.

    Chinese BERT tokenizes CJK text per character, so this covers the captions.
    """
    chars = sorted({ch for cap in captions for ch in cap if not ch.isspace()})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(SPECIAL_TOKENS + chars) + "\n", encoding="utf-8")
    return path


def _tiny_clip(folder: Path, name: str, cfg: dict | None, image_size: int | None, seed: int,
               logit_scale: float | None, quick_gelu: bool = False) -> tuple[Any, Path]:
    """A registered tiny open_clip CLIP (random weights) and its config file."""
    import open_clip
    import torch

    cfg = json.loads(json.dumps(cfg or TINY_VIT))
    if image_size:
        cfg["vision_cfg"]["image_size"] = image_size
    if quick_gelu:
        cfg["quick_gelu"] = True
    folder.mkdir(parents=True, exist_ok=True)
    cfg_file = folder / f"{name}.json"
    cfg_file.write_text(json.dumps(cfg), encoding="utf-8")
    open_clip.add_model_config(cfg_file)
    torch.manual_seed(seed)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # open_clip warns that a random init is random
    try:
        clip = open_clip.create_model(name)
    finally:
        root.setLevel(level)
    if logit_scale is not None:
        with torch.no_grad():
            clip.logit_scale.fill_(logit_scale)
    return clip, cfg_file


def write_tiny_image_tower(folder: Path, name: str = "zhclip-Tiny-ViT", cfg: dict | None = None,
                           image_size: int | None = None, seed: int = 0,
                           logit_scale: float | None = None) -> dict[str, str]:
    """Register a tiny open_clip config and save a full CLIP checkpoint of it.

    ``logit_scale`` sets the checkpoint's temperature (default: CLIP's ln(1/0.07)).
    Returns the ``train.image`` mapping that loads it (config_file + pretrained).
    """
    import torch

    clip, cfg_file = _tiny_clip(folder, name, cfg, image_size, seed, logit_scale)
    weights = folder / f"{name}.pt"
    torch.save(clip.state_dict(), weights)
    return {"model": name, "config_file": str(cfg_file), "pretrained": str(weights)}


def write_tiny_openai_archive(folder: Path, name: str = "zhclip-Tiny-OpenAI", cfg: dict | None = None,
                              seed: int = 0, logit_scale: float = 4.6052) -> dict[str, str]:
    """A tiny CLIP saved the way OpenAI published theirs: a scripted (TorchScript)
    QuickGELU model in float16, whose state-dict names are OpenAI's (open_clip
    kept them). ``logit_scale`` defaults to OpenAI's ln 100."""
    import torch

    clip, cfg_file = _tiny_clip(folder, name, cfg, None, seed, logit_scale, quick_gelu=True)
    # OpenAI's CLIP builds its causal mask in a function, so their state dict has no
    # attn_mask: keep open_clip's as a plain attribute, out of the state dict
    mask = clip._buffers.pop("attn_mask", None)
    if mask is not None:
        clip.attn_mask = mask
    archive = folder / f"{name}.pt"
    torch.jit.script(clip.eval().half()).save(str(archive))
    return {"model": name, "config_file": str(cfg_file), "pretrained": str(archive)}


def write_tiny_bert(folder: Path, captions: Iterable[str], seed: int = 0, dropout: float = 0.1,
                    hidden: int = 32, layers: int = 2) -> Path:
    """A small BERT saved with save_pretrained (with a pooler, like the real
    checkpoints, so the pooler-dropping path runs), its vocab beside it."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = write_vocab(folder / "vocab.txt", captions)
    n = len(vocab.read_text(encoding="utf-8").split())
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=n, hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=64,
                     hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    BertModel(cfg).save_pretrained(folder)
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(folder)
    return folder
