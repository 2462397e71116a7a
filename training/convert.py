"""Convert zhclip models to and from the checkpoints people deploy with.

Two formats:

- ``cn_clip``: a Chinese-CLIP (``pip install cn-clip``) training checkpoint,
  ``{"state_dict": {"module.visual...", "module.bert...", ...}}``, plus the two
  model-config JSON files cn_clip's ``create_model`` reads. A zhclip model
  differs from it only by names and one transpose (the text projection).
- ``hf``: a transformers ``ChineseCLIPModel`` folder (``save_pretrained``) with
  its processor, so ``pipeline("zero-shot-image-classification", model=folder)``
  works. Only ViT image towers: transformers has no ResNet tower for it.

A format that cannot hold a model exactly is refused (:class:`CannotConvert`)
rather than written: cn_clip always builds QuickGELU ViT blocks with an MLP
ratio of 4, hard-codes BERT's LayerNorm epsilon, and masks text by the id of
``[PAD]``; open_clip options that neither format knows (layer scale,
attentional pooling, ...) would be dropped silently otherwise.

:func:`read_init_weights` is what ``train.init_from`` calls: a zhclip export or
checkpoint, a cn_clip checkpoint, or a transformers folder, as a zhclip state dict.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

FORMATS = ("cn_clip", "hf")
BERT_LAYER_NORM_EPS = 1e-12  # what cn_clip's CLIP passes to its BertConfig, always
VIT_LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default: open_clip, cn_clip and HF CLIP vision
CN_CLIP_PREFIX = "module."  # cn_clip's checkpoints come from DistributedDataParallel
# open_clip ViT settings both formats can hold; any other non-default one is refused.
VIT_SHAPE_KEYS = {"layers", "width", "head_width", "mlp_ratio", "patch_size", "image_size",
                  "patch_dropout"}


class CannotConvert(ValueError):
    """The target format cannot hold this model without changing its features."""


Tensors = dict[str, torch.Tensor]


# ---- what a spec is ---------------------------------------------------------


def _vision_cfg(spec: Mapping[str, Any]) -> dict[str, Any]:
    return dict(spec["image"]["vision_cfg"])


def is_resnet(spec: Mapping[str, Any]) -> bool:
    """open_clip builds a ModifiedResNet when ``layers`` is a list of four stages."""
    return isinstance(_vision_cfg(spec).get("layers"), (list, tuple))


def _image_size(vision_cfg: Mapping[str, Any]) -> int:
    size = vision_cfg.get("image_size", 224)
    if isinstance(size, (list, tuple)):
        if size[0] != size[1]:
            raise CannotConvert(f"image size {size} is not square")
        size = size[0]
    return int(size)


def _unsupported_vit_options(vision_cfg: Mapping[str, Any]) -> list[str]:
    """open_clip ViT options set away from their defaults, which neither format holds."""
    from open_clip.model import CLIPVisionCfg

    defaults = {f.name: (f.default if f.default is not dataclasses.MISSING else
                         f.default_factory())  # type: ignore[misc]
                for f in dataclasses.fields(CLIPVisionCfg)
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
    return sorted(k for k, v in vision_cfg.items()
                  if k not in VIT_SHAPE_KEYS and k in defaults and v != defaults[k]
                  and not (k == "act_kwargs" and not v) and not (k == "norm_kwargs" and not v))


def cn_clip_problems(spec: Mapping[str, Any], vocab: list[str]) -> list[str]:
    """Why cn_clip's model code would compute other features than this model (empty: none)."""
    problems = []
    vc = _vision_cfg(spec)
    if not is_resnet(spec):
        if not spec["image"].get("quick_gelu"):
            problems.append("the image tower uses GELU, but cn_clip always builds QuickGELU "
                            "ViT blocks (train with a -quickgelu model or train.image.quick_gelu: true)")
        if float(vc.get("mlp_ratio", 4.0)) != 4.0:
            problems.append(f"the image tower's mlp_ratio is {vc['mlp_ratio']}; cn_clip builds 4")
        problems += [f"open_clip option {k}={vc[k]!r} has no cn_clip equivalent"
                     for k in _unsupported_vit_options(vc)]
    bert = spec["text"]["bert_config"]
    if bert.get("hidden_act", "gelu") != "gelu":
        problems.append(f"the text tower's activation is {bert['hidden_act']!r}; cn_clip's BERT "
                        "runs 'gelu'")
    if float(bert.get("layer_norm_eps", BERT_LAYER_NORM_EPS)) != BERT_LAYER_NORM_EPS:
        problems.append(f"the text tower's layer_norm_eps is {bert['layer_norm_eps']}; cn_clip "
                        f"hard-codes {BERT_LAYER_NORM_EPS}")
    if bert.get("position_embedding_type", "absolute") != "absolute":
        problems.append("cn_clip's BERT has only absolute position embeddings")
    if not vocab or vocab[0] != "[PAD]":
        problems.append("cn_clip masks text by the id of [PAD], which must be 0 in the vocabulary")
    return problems


def hf_problems(spec: Mapping[str, Any]) -> list[str]:
    """Why transformers' ChineseCLIPModel would compute other features (empty: none)."""
    if is_resnet(spec):
        return ["the image tower is a ResNet; transformers' ChineseCLIPModel has only ViT "
                "image towers (export RN50 models with --format cn_clip)"]
    vc = _vision_cfg(spec)
    problems = [f"open_clip option {k}={vc[k]!r} has no ChineseCLIPVisionConfig equivalent"
                for k in _unsupported_vit_options(vc)]
    width, head_width = int(vc["width"]), int(vc.get("head_width", 64))
    if width % head_width:
        problems.append(f"width {width} is not a multiple of head_width {head_width}")
    return problems


def refuse_if(problems: list[str], fmt: str) -> None:
    if problems:
        raise CannotConvert(f"cannot export to {fmt} without changing the model's features: "
                            + "; ".join(problems))


# ---- cn_clip -----------------------------------------------------------------


def cn_clip_name(key: str) -> str:
    """The name cn_clip's CLIP gives zhclip's weight ``key`` (no ``module.`` prefix)."""
    if key == "text.proj.weight":
        return "text_projection"
    if key.startswith("text.bert."):
        return "bert." + key[len("text.bert."):]
    if key.startswith("image."):
        return "visual." + key[len("image."):]
    if key == "logit_scale":
        return key
    raise KeyError(f"no cn_clip name for weight {key!r}")


def to_cn_clip_state_dict(state: Mapping[str, torch.Tensor]) -> Tensors:
    """zhclip names -> cn_clip's CLIP names (no ``module.`` prefix)."""
    out: Tensors = {}
    for key, value in state.items():
        if key == "text.proj.weight":
            value = value.t().contiguous()  # Linear [E, H] -> Parameter [H, E]
        out[cn_clip_name(key)] = value
    return out


def from_cn_clip_state_dict(state: Mapping[str, torch.Tensor]) -> Tensors:
    """cn_clip's CLIP names (with or without ``module.``) -> zhclip names; pooler dropped."""
    out: Tensors = {}
    for key, value in state.items():
        key = key.removeprefix(CN_CLIP_PREFIX)
        if key.startswith("bert.pooler."):
            continue  # zhclip's text tower discards the pooler, as the paper does
        if key == "text_projection":
            out["text.proj.weight"] = value.t().contiguous()
        elif key.startswith("bert."):
            out["text.bert." + key[len("bert."):]] = value
        elif key.startswith("visual."):
            out["image." + key[len("visual."):]] = value
        elif key == "logit_scale":
            out[key] = value
        else:
            raise KeyError(f"unexpected weight {key!r} in a cn_clip checkpoint")
    return {k: v.float() if v.is_floating_point() else v for k, v in out.items()}


def cn_clip_model_configs(spec: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(vision, text) configs in cn_clip's model_configs/*.json format; merged, they are
    the keyword arguments of ``cn_clip.clip.model.CLIP``."""
    vc = _vision_cfg(spec)
    vision: dict[str, Any] = {
        "embed_dim": int(spec["embed_dim"]),
        "image_resolution": _image_size(vc),
        "vision_layers": list(vc["layers"]) if is_resnet(spec) else int(vc["layers"]),
        "vision_width": int(vc["width"]),
        "vision_patch_size": vc.get("patch_size") or None,
        "vision_head_width": int(vc.get("head_width", 64)),
    }
    b = spec["text"]["bert_config"]
    text = {
        "vocab_size": int(b["vocab_size"]),
        "text_attention_probs_dropout_prob": float(b.get("attention_probs_dropout_prob", 0.1)),
        "text_hidden_act": b.get("hidden_act", "gelu"),
        "text_hidden_dropout_prob": float(b.get("hidden_dropout_prob", 0.1)),
        "text_hidden_size": int(b["hidden_size"]),
        "text_initializer_range": float(b.get("initializer_range", 0.02)),
        "text_intermediate_size": int(b["intermediate_size"]),
        "text_max_position_embeddings": int(b["max_position_embeddings"]),
        "text_num_attention_heads": int(b["num_attention_heads"]),
        "text_num_hidden_layers": int(b["num_hidden_layers"]),
        "text_type_vocab_size": int(b.get("type_vocab_size", 2)),
    }
    return vision, text


def cn_clip_model_name(spec: Mapping[str, Any]) -> tuple[str, str]:
    """(vision, text) config names: cn_clip looks them up as model_configs/{name}.json."""
    vision = str(spec["image"].get("name") or "zhclip-vision").removesuffix("-quickgelu")
    b = spec["text"]["bert_config"]
    return vision, f"zhclip-BERT-L{b['num_hidden_layers']}-H{b['hidden_size']}"


def write_cn_clip(data: Mapping[str, Any], out_dir: str | Path) -> Path:
    """Write ``{out}/zhclip.pt`` (cn_clip checkpoint), its model_configs and vocab.txt."""
    spec, vocab = data["spec"], list(data["vocab"])
    refuse_if(cn_clip_problems(spec, vocab), "cn_clip")
    out = Path(out_dir)
    (out / "model_configs").mkdir(parents=True, exist_ok=True)
    vision_name, text_name = cn_clip_model_name(spec)
    vision, text = cn_clip_model_configs(spec)
    _write_json(out / "model_configs" / f"{vision_name}.json", vision)
    _write_json(out / "model_configs" / f"{text_name}.json", text)
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    state = to_cn_clip_state_dict(data["state_dict"])
    checkpoint = {
        "epoch": 0,
        "step": 0,
        "name": f"{vision_name}@{text_name}",
        "state_dict": {CN_CLIP_PREFIX + k: v.detach().cpu() for k, v in state.items()},
    }
    path = out / "zhclip.pt"
    tmp = path.with_suffix(".pt.tmp")
    torch.save(checkpoint, tmp)
    tmp.replace(path)
    return path


# ---- transformers ChineseCLIPModel --------------------------------------------

_HF_VISION_RENAMES = {
    "class_embedding": "vision_model.embeddings.class_embedding",
    "conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "ln_post.weight": "vision_model.post_layernorm.weight",
    "ln_post.bias": "vision_model.post_layernorm.bias",
}
_HF_BLOCK_RENAMES = {
    "ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
}
_BLOCK = "transformer.resblocks."
_HF_BLOCK = "vision_model.encoder.layers."


def hf_config(spec: Mapping[str, Any]):
    """The ChineseCLIPConfig whose model computes this spec's features."""
    from transformers import ChineseCLIPConfig

    vc = _vision_cfg(spec)
    width, head_width = int(vc["width"]), int(vc.get("head_width", 64))
    bert = {k: v for k, v in spec["text"]["bert_config"].items()
            if k not in ("architectures", "model_type", "transformers_version", "_name_or_path")}
    vision = {
        "hidden_size": width,
        "intermediate_size": int(width * float(vc.get("mlp_ratio", 4.0))),
        "num_hidden_layers": int(vc["layers"]),
        "num_attention_heads": width // head_width,
        "image_size": _image_size(vc),
        "patch_size": int(vc["patch_size"]),
        "hidden_act": "quick_gelu" if spec["image"].get("quick_gelu") else "gelu",
        "layer_norm_eps": VIT_LAYER_NORM_EPS,
        "projection_dim": int(spec["embed_dim"]),
    }
    return ChineseCLIPConfig(text_config=bert, vision_config=vision,
                             projection_dim=int(spec["embed_dim"]))


def to_hf_state_dict(state: Mapping[str, torch.Tensor]) -> Tensors:
    """zhclip names -> ChineseCLIPModel names (q, k, v split out of open_clip's in_proj)."""
    out: Tensors = {}
    for key, value in state.items():
        if key == "logit_scale":
            out[key] = value
        elif key == "text.proj.weight":
            out["text_projection.weight"] = value
        elif key.startswith("text.bert."):
            out["text_model." + key[len("text.bert."):]] = value
        elif key == "image.proj":
            out["visual_projection.weight"] = value.t().contiguous()
        elif key.startswith("image." + _BLOCK):
            out.update(_block_to_hf(key[len("image." + _BLOCK):], value))
        elif key.startswith("image.") and key[len("image."):] in _HF_VISION_RENAMES:
            out[_HF_VISION_RENAMES[key[len("image."):]]] = value
        else:
            raise KeyError(f"no ChineseCLIPModel name for weight {key!r}")
    return out


def _block_to_hf(rest: str, value: torch.Tensor) -> Tensors:
    layer, name = rest.split(".", 1)
    prefix = f"{_HF_BLOCK}{layer}."
    if name in ("attn.in_proj_weight", "attn.in_proj_bias"):
        kind = name.rsplit("_", 1)[1]
        q, k, v = value.chunk(3, dim=0)
        return {f"{prefix}self_attn.{n}_proj.{kind}": t.contiguous()
                for n, t in (("q", q), ("k", k), ("v", v))}
    module, param = name.rsplit(".", 1)
    if module not in _HF_BLOCK_RENAMES:
        raise KeyError(f"no ChineseCLIPModel name for image block weight {name!r}")
    return {f"{prefix}{_HF_BLOCK_RENAMES[module]}.{param}": value}


def from_hf_state_dict(state: Mapping[str, torch.Tensor]) -> Tensors:
    """ChineseCLIPModel names -> zhclip names (q, k, v joined into in_proj)."""
    back_vision = {v: k for k, v in _HF_VISION_RENAMES.items()}
    back_block = {v: k for k, v in _HF_BLOCK_RENAMES.items()}
    out: Tensors = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.endswith("position_ids") or key.startswith("text_model.pooler."):
            continue
        if key == "logit_scale":
            out[key] = value
        elif key == "text_projection.weight":
            out["text.proj.weight"] = value
        elif key.startswith("text_model."):
            out["text.bert." + key[len("text_model."):]] = value
        elif key == "visual_projection.weight":
            out["image.proj"] = value.t().contiguous()
        elif key in back_vision:
            out["image." + back_vision[key]] = value
        elif key.startswith(_HF_BLOCK):
            layer, name = key[len(_HF_BLOCK):].split(".", 1)
            module, param = name.rsplit(".", 1)
            if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault((layer, param), {})[module[len("self_attn."):][0]] = value
            elif module in back_block:
                out[f"image.{_BLOCK}{layer}.{back_block[module]}.{param}"] = value
            else:
                raise KeyError(f"unexpected weight {key!r} in a ChineseCLIPModel")
        else:
            raise KeyError(f"unexpected weight {key!r} in a ChineseCLIPModel")
    for (layer, param), parts in qkv.items():
        out[f"image.{_BLOCK}{layer}.attn.in_proj_{param}"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def write_hf(data: Mapping[str, Any], out_dir: str | Path) -> Path:
    """Write a ChineseCLIPModel folder with its processor (image processor + tokenizer)."""
    from transformers import ChineseCLIPModel

    spec = data["spec"]
    refuse_if(hf_problems(spec), "hf")
    out = Path(out_dir)
    model = ChineseCLIPModel(hf_config(spec))
    missing, unexpected = model.load_state_dict(to_hf_state_dict(data["state_dict"]), strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise CannotConvert(f"weights do not fill a ChineseCLIPModel: missing {missing[:5]}, "
                            f"unexpected {unexpected[:5]}")
    model.save_pretrained(out)
    hf_processor(spec, list(data["vocab"]), int(data.get("context_length",
                                                       spec["context_length"]))).save_pretrained(out)
    return out


def hf_processor(spec: Mapping[str, Any], vocab: list[str], context_length: int):
    """A ChineseCLIPProcessor with the spec's size, mean and std and zhclip's vocabulary.

    ChineseCLIPImageProcessor resizes to a square (as cn_clip's own transform does)
    where zhclip's eval transform resizes the short side and centre-crops: the same
    pixels for the square images the pipeline writes, a squash for other shapes.
    """
    import tempfile

    from PIL import Image
    from transformers import BertTokenizerFast, ChineseCLIPImageProcessor, ChineseCLIPProcessor

    size = int(spec["image_size"])
    images = ChineseCLIPImageProcessor(
        size={"height": size, "width": size}, crop_size={"height": size, "width": size},
        resample=Image.BICUBIC, image_mean=list(spec["mean"]), image_std=list(spec["std"]))
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = Path(tmp) / "vocab.txt"
        vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
        tokenizer = BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True,
                                      model_max_length=context_length)
    return ChineseCLIPProcessor(image_processor=images, tokenizer=tokenizer)


# ---- reading any of them back ------------------------------------------------


def detect_format(path: str | Path) -> str:
    """``zhclip``, ``cn_clip`` or ``hf`` for a file or folder; ValueError if none."""
    p = Path(path)
    if p.is_dir():
        cfg = p / "config.json"
        if cfg.is_file() and json.loads(cfg.read_text(encoding="utf-8")).get(
                "model_type") == "chinese_clip":
            return "hf"
        raise ValueError(f"{path} is a folder but not a transformers ChineseCLIPModel "
                         "(no config.json with model_type chinese_clip)")
    if not p.is_file():
        raise FileNotFoundError(f"no model at {path}")
    data = torch.load(p, map_location="cpu", weights_only=False)
    if isinstance(data, dict) and data.get("format") in ("zhclip-export", "zhclip-checkpoint"):
        return "zhclip"
    if _is_cn_clip(data):
        return "cn_clip"
    raise ValueError(f"{path} is neither a zhclip export/checkpoint nor a cn_clip checkpoint")


def _is_cn_clip(data: Any) -> bool:
    sd = data.get("state_dict") if isinstance(data, dict) else None
    return isinstance(sd, dict) and any(
        k.removeprefix(CN_CLIP_PREFIX).startswith("bert.embeddings.") for k in sd)


def read_init_weights(path: str | Path) -> Tensors:
    """Weights to start training from, in zhclip names, from any supported format."""
    from zhclip.training.export import read_weights_file

    fmt = detect_format(path)
    if fmt == "zhclip":
        return read_weights_file(path)["state_dict"]
    if fmt == "cn_clip":
        data = torch.load(Path(path), map_location="cpu", weights_only=False)
        return from_cn_clip_state_dict(data["state_dict"])
    from transformers import ChineseCLIPModel

    model = ChineseCLIPModel.from_pretrained(str(path))
    return from_hf_state_dict(model.state_dict())


def export_to(fmt: str, data: Mapping[str, Any], out_dir: str | Path) -> Path:
    """Write ``data`` (spec, state_dict, vocab) in ``fmt``; CannotConvert if it cannot hold it."""
    if fmt == "cn_clip":
        return write_cn_clip(data, out_dir)
    if fmt == "hf":
        return write_hf(data, out_dir)
    raise ValueError(f"unknown export format {fmt!r}; choose from {FORMATS}")


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
