"""Write a zhclip model as an open_clip ``local-dir:`` folder.

``open_clip.create_model_and_transforms("local-dir:DIR")`` and
``open_clip.get_tokenizer("local-dir:DIR")`` load the folder with open_clip's own
code: the image tower is open_clip's already (same config, same weight names
under ``visual.``), and the text tower becomes open_clip's Hugging Face adapter
(``HFTextEncoder``) over the same BERT, pooled at [CLS] and projected by a
bias-free linear layer, which is exactly zhclip's ``TextTower``.

The folder holds:

- ``open_clip_config.json``: ``model_cfg`` (``text_cfg.hf_model_name`` names this
  folder by its absolute path, since open_clip hands it to ``AutoConfig`` as is)
  and ``preprocess_cfg`` (size, mean, std; bicubic resize of the short side and
  a centre crop, zhclip's eval transform);
- ``open_clip_model.safetensors``: every weight, in open_clip's names;
- ``config.json``: the BERT config (no BERT weights: the full checkpoint fills them);
- the tokenizer files (``vocab.txt``, ``tokenizer.json``, ``tokenizer_config.json``).

What open_clip does differently, and what it costs: its ``HFTokenizer`` runs
every caption through ftfy before BERT sees it (``clean`` may be ``whitespace``,
``lower`` or ``canonicalize``, all of which call ftfy), and ftfy folds
full-width forms to ASCII (``，`` -> ``,``, ``（`` -> ``(``, ``！`` -> ``!``),
straightens single curly quotes and unescapes HTML entities. zhclip, like
Chinese-CLIP, keeps them, and the Chinese BERT vocabulary has separate ids for
both spellings, so such captions get other token ids. Captions the cleaning
leaves unchanged, and token ids fed to ``encode_text`` directly, give zhclip's
features exactly; :func:`cleaning_changes` tells which captions are which.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from zhclip.training.convert import refuse_if
from zhclip.training.export import atomic_write_dir, write_tokenizer_files

FORMAT = "open_clip"
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
POOLER = "cls_last_hidden_state_pooler"  # [CLS] state, BERT's pooler unused (as zhclip's tower)
PROJECTION = "linear"  # bias-free nn.Linear(hidden, embed_dim), zhclip's text.proj
PAD = "[PAD]"


def open_clip_problems(spec: Mapping[str, Any], vocab: list[str]) -> list[str]:
    """Why open_clip's model code would compute other features than this model (empty: none)."""
    from open_clip.hf_configs import arch_dict

    problems = []
    bert = spec["text"]["bert_config"]
    model_type = bert.get("model_type", "bert")
    if model_type not in arch_dict:
        problems.append(
            f"open_clip's Hugging Face adapter does not know text model type {model_type!r}"
        )
    # HFTextEncoder masks attention where the id equals config.pad_token_id, zhclip's
    # tokenizer where it padded: the two agree only if the config names [PAD]'s id
    pad_id = bert.get("pad_token_id", 0)
    if PAD not in vocab:
        problems.append("the vocabulary has no [PAD], which open_clip's text adapter masks by")
    elif vocab.index(PAD) != pad_id:
        problems.append(
            f"the text config's pad_token_id is {pad_id} but [PAD] is id "
            f"{vocab.index(PAD)}; open_clip masks attention by pad_token_id"
        )
    return problems


def to_open_clip_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """zhclip names -> open_clip CustomTextCLIP names (contiguous, for safetensors)."""
    out = {}
    for key, value in state.items():
        if key.startswith("image."):
            name = "visual." + key[len("image.") :]
        elif key.startswith("text.bert."):
            name = "text.transformer." + key[len("text.bert.") :]
        elif key in ("text.proj.weight", "logit_scale"):
            name = key
        else:
            raise KeyError(f"no open_clip name for weight {key!r}")
        out[name] = value.detach().cpu().contiguous()
    return out


def open_clip_config(spec: Mapping[str, Any], folder: Path, context_length: int) -> dict[str, Any]:
    """The ``open_clip_config.json`` of a folder at ``folder`` (absolute)."""
    image = spec["image"]
    vocab_size = int(spec["text"]["bert_config"]["vocab_size"])
    return {
        "model_cfg": {
            "embed_dim": int(spec["embed_dim"]),
            "quick_gelu": bool(image.get("quick_gelu", False)),
            "vision_cfg": json.loads(json.dumps(image["vision_cfg"])),
            "text_cfg": {
                "hf_model_name": str(folder),
                "hf_tokenizer_name": str(folder),
                "hf_proj_type": PROJECTION,
                "hf_pooler_type": POOLER,
                "context_length": int(context_length),
                "vocab_size": vocab_size,
            },
            "custom_text": True,
        },
        "preprocess_cfg": {
            "size": int(spec["image_size"]),
            "mode": "RGB",
            "mean": list(spec["mean"]),
            "std": list(spec["std"]),
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
    }


def write_open_clip(data: Mapping[str, Any], out_dir: str | Path) -> Path:
    """Write the folder (atomically: built beside it, then renamed into place)."""
    from safetensors.torch import save_file
    from transformers import BertConfig

    spec, vocab = data["spec"], list(data["vocab"])
    refuse_if(open_clip_problems(spec, vocab), FORMAT)
    context_length = int(data.get("context_length", spec["context_length"]))
    final = Path(out_dir).resolve()
    with atomic_write_dir(final) as tmp:
        BertConfig.from_dict(spec["text"]["bert_config"]).save_pretrained(tmp)
        write_tokenizer_files(vocab, context_length, tmp)
        save_file(to_open_clip_state_dict(data["state_dict"]), str(tmp / WEIGHTS_FILE))
        config = open_clip_config(spec, final, context_length)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return final


def cleaning_changes(captions: list[str], clean: str = "whitespace") -> list[bool]:
    """For each caption, whether open_clip's text cleaning changes what BERT sees.

    Compared after zhclip's own normalisation (lower case, curly double quotes),
    which the BERT tokenizer would apply anyway, so only ftfy's extra folding counts.
    """
    from open_clip.tokenizer import get_clean_fn
    from zhclip.training.tokenizer import normalise_caption

    fn = get_clean_fn(clean)
    return [normalise_caption(fn(c)) != " ".join(normalise_caption(c).split()) for c in captions]
