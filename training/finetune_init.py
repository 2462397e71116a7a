"""The model a fine-tune starts from, with its tokenizer, from any format zhclip reads.

A zhclip export or checkpoint carries its spec and vocabulary. A transformers
``ChineseCLIPModel`` folder carries both in ``config.json`` and ``vocab.txt``. A
cn_clip checkpoint carries only weights: the architecture is read from their
shapes; head counts, which shapes do not tell, come from a ``model_configs/``
folder beside the checkpoint (cn_clip's config JSONs, as ``zhclip export --format
cn_clip`` writes them), else from cn_clip's published configs (64-wide heads
everywhere but ViT-H/14's 80-wide ones). The vocabulary comes from a ``vocab.txt`` beside the
checkpoint, else the one the cn_clip package ships (the 21128-token Chinese BERT
vocabulary every published cn_clip model uses). Weights are converted by
:mod:`zhclip.training.convert`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from zhclip.training.convert import (
    CN_CLIP_PREFIX,
    detect_format,
    from_cn_clip_state_dict,
    read_init_weights,
)
from zhclip.training.export import read_weights_file
from zhclip.training.model import ChineseCLIP, load_weights, model_from_spec
from zhclip.training.tokenizer import CaptionTokenizer, load_tokenizer, tokenizer_from_vocab

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]  # what cn_clip and ChineseCLIPModel normalise by
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
BERT_CONFIG_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "intermediate_size", "hidden_act", "hidden_dropout_prob",
                    "attention_probs_dropout_prob", "max_position_embeddings", "type_vocab_size",
                    "initializer_range", "layer_norm_eps", "pad_token_id")


class InitError(ValueError):
    """The --init model cannot be read or its architecture cannot be rebuilt."""


def _spec(vision_cfg: dict[str, Any], quick_gelu: bool, embed_dim: int, bert: dict[str, Any],
          context_length: int, logit_scale: float) -> dict[str, Any]:
    return {
        "image": {"name": "ViT", "embed_dim": embed_dim, "vision_cfg": vision_cfg,
                  "quick_gelu": quick_gelu, "logit_scale": logit_scale},
        "text": {"bert_config": {**bert, "model_type": "bert"}},
        "embed_dim": embed_dim, "context_length": context_length,
        "image_size": int(vision_cfg["image_size"]), "mean": OPENAI_MEAN, "std": OPENAI_STD,
    }


def hf_spec(folder: Path, context_length: int) -> dict[str, Any]:
    """The spec of a ChineseCLIPModel folder, from its config.json."""
    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    v, t = cfg.get("vision_config", {}), cfg.get("text_config", {})
    width = int(v.get("hidden_size", 768))
    vision = {"layers": int(v.get("num_hidden_layers", 12)), "width": width,
              "head_width": width // int(v.get("num_attention_heads", 12)),
              "mlp_ratio": int(v.get("intermediate_size", 4 * width)) / width,
              "patch_size": int(v.get("patch_size", 32)), "image_size": int(v.get("image_size", 224))}
    bert = {k: t[k] for k in BERT_CONFIG_KEYS if k in t}
    return _spec(vision, v.get("hidden_act", "quick_gelu") == "quick_gelu",
                 int(cfg.get("projection_dim", 512)), bert, context_length,
                 float(cfg.get("logit_scale_init_value", 2.6592)))


def _count_blocks(state: dict[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


# cn_clip text-config keys -> BertConfig keys (what shapes do not tell)
_CN_CLIP_TEXT_KEYS = {"text_num_attention_heads": "num_attention_heads",
                      "text_hidden_dropout_prob": "hidden_dropout_prob",
                      "text_attention_probs_dropout_prob": "attention_probs_dropout_prob",
                      "text_hidden_act": "hidden_act", "text_initializer_range": "initializer_range"}


def _configs_beside(folder: Path, width: int, hidden: int) -> tuple[int, dict[str, Any]]:
    """(vision head width, BertConfig settings) from cn_clip config JSONs in ``folder``,
    else cn_clip's published values (dropout 0.1 as every cn_clip BERT config has)."""
    vision_head = 80 if width == 1280 else 64
    text: dict[str, Any] = {"num_attention_heads": hidden // 64, "hidden_dropout_prob": 0.1,
                            "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu"}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        info = json.loads(path.read_text(encoding="utf-8"))
        if info.get("vision_width") == width and "vision_head_width" in info:
            vision_head = int(info["vision_head_width"])
        if info.get("text_hidden_size") == hidden:
            text.update({ours: info[theirs] for theirs, ours in _CN_CLIP_TEXT_KEYS.items()
                         if theirs in info})
    return vision_head, text


def cn_clip_spec(state: dict[str, torch.Tensor], context_length: int,
                 configs: Path | None = None) -> dict[str, Any]:
    """The spec of a cn_clip ViT checkpoint (zhclip names), read from weight shapes."""
    if "image.conv1.weight" not in state or "image.positional_embedding" not in state:
        raise InitError("only cn_clip ViT checkpoints can be fine-tuned from their weights alone; "
                        "convert a ResNet one with a config (train.image/train.text + init_from)")
    width, _, patch, _ = state["image.conv1.weight"].shape
    grid = int(round((state["image.positional_embedding"].shape[0] - 1) ** 0.5))
    vision = {"layers": _count_blocks(state, "image.transformer.resblocks."), "width": int(width),
              "patch_size": int(patch),
              "image_size": grid * int(patch)}
    words = state["text.bert.embeddings.word_embeddings.weight"]
    hidden = int(words.shape[1])
    vision["head_width"], text = _configs_beside(configs or Path("-"), int(width), hidden)
    bert = {"vocab_size": int(words.shape[0]), "hidden_size": hidden,
            "num_hidden_layers": _count_blocks(state, "text.bert.encoder.layer."),
            "intermediate_size": int(state["text.bert.encoder.layer.0.intermediate.dense.weight"].shape[0]),
            "max_position_embeddings": int(state["text.bert.embeddings.position_embeddings.weight"].shape[0]),
            "type_vocab_size": int(state["text.bert.embeddings.token_type_embeddings.weight"].shape[0]),
            "layer_norm_eps": 1e-12, "pad_token_id": 0, **text}
    return _spec(vision, True, int(state["image.proj"].shape[1]), bert, context_length,
                 float(state["logit_scale"]))


def _cn_clip_vocab(path: Path) -> Path:
    beside = path.parent / "vocab.txt"
    if beside.is_file():
        return beside
    try:
        import cn_clip.clip

        return Path(cn_clip.clip.__file__).parent / "vocab.txt"
    except ImportError:
        raise InitError(f"{path}: put cn_clip's vocab.txt beside the checkpoint (or install "
                        "cn-clip) so captions are tokenized as the model was trained") from None


def load_init_model(path: str | Path, context_length: int) -> tuple[ChineseCLIP, CaptionTokenizer, str]:
    """(model with the weights, its tokenizer at ``context_length``, the format read)."""
    p = Path(path)
    try:
        fmt = detect_format(p)
    except (ValueError, FileNotFoundError) as err:
        raise InitError(f"--init {path}: {err}") from None
    if fmt == "zhclip":
        data = read_weights_file(p)
        spec, state = dict(data["spec"]), data["state_dict"]
        tokenizer = tokenizer_from_vocab(data["vocab"], context_length)
    elif fmt == "hf":
        spec, state = hf_spec(p, context_length), read_init_weights(p)
        tokenizer = load_tokenizer(str(p), context_length)
    else:
        raw = torch.load(p, map_location="cpu", weights_only=True)["state_dict"]
        state = from_cn_clip_state_dict({k.removeprefix(CN_CLIP_PREFIX): v for k, v in raw.items()})
        spec = cn_clip_spec(state, context_length, p.parent / "model_configs")
        tokenizer = load_tokenizer(str(_cn_clip_vocab(p)), context_length)
    positions = int(spec["text"]["bert_config"].get("max_position_embeddings", 512))
    if context_length > positions:
        raise InitError(f"context_length {context_length} exceeds the text tower's {positions} "
                        "positions")
    spec["context_length"] = context_length
    model = model_from_spec(spec)
    try:
        load_weights(model, state)
    except ValueError as err:
        raise InitError(f"--init {path}: {err}") from None
    return model, tokenizer, fmt

