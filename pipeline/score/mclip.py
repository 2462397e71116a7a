"""Load M-CLIP text towers and open_clip image towers for scoring.

M-CLIP checkpoints (Carlsson et al. 2022, e.g. M-CLIP/XLM-Roberta-Large-Vit-B-32)
hold ``config.json`` (model_type "M-CLIP": modelBase, transformerDimensions,
numDims), weights whose keys start with ``transformer.`` (an XLM-R encoder) and
``LinearTransformation.`` (the projection into CLIP's space), and the
tokenizer files. The multilingual-clip package builds its model by calling
``AutoModel.from_pretrained(modelBase)`` inside ``__init__``: that fetches the
base XLM-R weights a second time only to overwrite them, and it breaks under
transformers 5. Here the encoder is built from the base *config* alone and
the checkpoint's weights are loaded into it, so only one set of weights is
ever read, with the transformers release this project pins.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

MCLIP_MODEL_TYPE = "M-CLIP"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "sentencepiece.bpe.model",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
)

# config.json of the base encoders M-CLIP checkpoints name as ``modelBase``, so
# the released checkpoints load with no network at all (the values are those
# of FacebookAI/xlm-roberta-large's config.json).
KNOWN_BASE_CONFIGS: dict[str, dict[str, Any]] = {
    "xlm-roberta-large": {
        "model_type": "xlm-roberta",
        "vocab_size": 250002,
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": 514,
        "type_vocab_size": 1,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-05,
        "pad_token_id": 1,
        "bos_token_id": 0,
        "eos_token_id": 2,
    },
}
KNOWN_BASE_CONFIGS["FacebookAI/xlm-roberta-large"] = KNOWN_BASE_CONFIGS["xlm-roberta-large"]


class ModelLoadError(RuntimeError):
    """A model that cannot be found or does not match its config; says which file."""


# --- locating files ------------------------------------------------------------


def resolve_model_dir(name_or_path: str) -> Path:
    """A local folder as is; a hub name downloaded (weights, config, tokenizer only).

    ``allow_patterns`` keeps the TensorFlow/Flax copies of a repo off the disk.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists() or name_or_path.startswith((".", "/", "~")):
        raise ModelLoadError(f"model path {name_or_path!r} is not a folder")
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(
            name_or_path, allow_patterns=["config.json", *WEIGHT_FILES, *TOKENIZER_FILES]
        )
    except Exception as err:
        raise ModelLoadError(
            f"cannot fetch {name_or_path!r} from the Hugging Face hub ({type(err).__name__}: {err}); "
            "download it elsewhere and set score.model to its local folder"
        ) from None
    return Path(local)


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """Weights of a checkpoint folder: safetensors preferred, else a torch pickle (weights only)."""
    for name in WEIGHT_FILES:
        f = folder / name
        if not f.is_file():
            continue
        if f.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(f))
        return torch.load(str(f), map_location="cpu", weights_only=True)
    raise ModelLoadError(f"no weights in {folder} (expected one of {list(WEIGHT_FILES)})")


def base_encoder_config(model_base: str, checkpoint_dir: Path):
    """transformers config of the encoder named by ``modelBase``, without its weights.

    Looked up as a local folder (absolute, or relative to the checkpoint), then
    among the known base models, then as a hub repo (config.json only).
    """
    from transformers import CONFIG_MAPPING, AutoConfig

    for candidate in (Path(model_base).expanduser(), checkpoint_dir / model_base):
        if (candidate / "config.json").is_file():
            return AutoConfig.from_pretrained(str(candidate))
    if model_base in KNOWN_BASE_CONFIGS:
        values = dict(KNOWN_BASE_CONFIGS[model_base])
        return CONFIG_MAPPING[values.pop("model_type")](**values)
    try:
        return AutoConfig.from_pretrained(model_base)
    except Exception as err:
        raise ModelLoadError(
            f"cannot find the config of base model {model_base!r} named in "
            f"{checkpoint_dir / 'config.json'} ({type(err).__name__}: {err}); put its config.json "
            "in a folder and point modelBase at it"
        ) from None


# --- M-CLIP text tower -------------------------------------------------------------


class MClipTextModel(torch.nn.Module):
    """XLM-R encoder, attention-masked mean pooling, linear map into CLIP space.

    Attribute names match the checkpoint's keys (``transformer.*``,
    ``LinearTransformation.*``) so its state dict loads as is.
    """

    def __init__(self, transformer: torch.nn.Module, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.transformer = transformer
        self.LinearTransformation = torch.nn.Linear(in_dim, out_dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask)[0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return self.LinearTransformation(pooled)


@dataclass
class MClipText:
    """Callable text tower: ``captions -> embeddings`` on ``device``."""

    model: MClipTextModel
    tokenizer: Any
    device: str
    embed_dim: int
    max_length: int

    def tokenize(self, captions: list[str]) -> Any:
        """CPU-side half of the tower; the score step runs it for batch i+1 while batch i scores."""
        return self.tokenizer(
            list(captions),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )

    def encode(self, tokens: Any) -> torch.Tensor:
        return self.model(
            tokens["input_ids"].to(self.device, non_blocking=True),
            tokens["attention_mask"].to(self.device, non_blocking=True),
        )

    def __call__(self, captions: list[str]) -> torch.Tensor:
        return self.encode(self.tokenize(captions))


def build_mclip_model(checkpoint_dir: Path) -> tuple[MClipTextModel, dict[str, Any]]:
    """Module with the checkpoint's architecture and random weights, plus its M-CLIP config."""
    from transformers import AutoModel

    config_path = checkpoint_dir / "config.json"
    if not config_path.is_file():
        raise ModelLoadError(f"{config_path} is missing; not an M-CLIP checkpoint folder")
    cfg = json.loads(config_path.read_text(encoding="utf-8"))
    missing = [k for k in ("modelBase", "transformerDimensions", "numDims") if k not in cfg]
    if missing:
        raise ModelLoadError(f"{config_path} lacks the M-CLIP fields {missing}")
    base_cfg = base_encoder_config(cfg["modelBase"], checkpoint_dir)
    transformer = AutoModel.from_config(base_cfg)
    return MClipTextModel(transformer, cfg["transformerDimensions"], cfg["numDims"]), cfg


def load_mclip_text(name_or_path: str, device: str = "cpu") -> MClipText:
    """Load an M-CLIP text tower from a folder or hub name, ready to embed captions."""
    from transformers import AutoTokenizer

    folder = resolve_model_dir(name_or_path)
    model, cfg = build_mclip_model(folder)
    state = read_state_dict(folder)
    # Old checkpoints carry the position_ids buffer; newer transformers make it
    # non-persistent. Anything else missing or extra means the wrong base config.
    state = {k: v for k, v in state.items() if not k.endswith("embeddings.position_ids")}
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if missing or result.unexpected_keys:
        raise ModelLoadError(
            f"weights in {folder} do not fit its config (modelBase {cfg['modelBase']!r}): "
            f"missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except Exception as err:
        # A folder with only sentencepiece.bpe.model makes transformers convert it
        # to a fast tokenizer, which needs a protobuf matching sentencepiece's; the
        # slow tokenizer gives the same ids without that.
        log.info("fast tokenizer unavailable for %s (%s); using the slow one", folder, err)
        tokenizer = AutoTokenizer.from_pretrained(str(folder), use_fast=False)
    positions = getattr(model.transformer.config, "max_position_embeddings", 514)
    # XLM-R positions start after the padding index, so two slots are unusable.
    max_length = min(512, positions - 2)
    model.eval().to(device)
    return MClipText(model, tokenizer, device, int(cfg["numDims"]), max_length)


# --- open_clip image tower ------------------------------------------------------------


@dataclass
class ImageTower:
    """An open_clip ``visual`` module and the preprocessing it expects."""

    module: torch.nn.Module
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    embed_dim: int


def _jit_archive(path: str) -> bool:
    """True for a TorchScript archive, the format of OpenAI's published ``.pt`` files."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())


def declared_quick_gelu(model_name: str, pretrained: str | None) -> bool | None:
    """The activation the image weights were trained with, as their source declares it.

    - ``local-dir:``: the folder's open_clip_config.json (``quick_gelu``, absent = GELU);
    - a built-in name with a pretrained tag: open_clip's pretrained table, which marks
      OpenAI's and other QuickGELU-trained weights ``quick_gelu=True``;
    - a TorchScript archive file: an OpenAI release, all QuickGELU;
    - anything else (a plain state-dict file, random weights): None, it declares nothing.

    open_clip itself only warns on a mismatch, and a mismatched tower gives shifted
    embeddings with no other symptom, so the scorer refuses one.
    """
    import open_clip

    if model_name.startswith("local-dir:"):
        cfg_file = Path(model_name[len("local-dir:"):]) / "open_clip_config.json"
        if not cfg_file.is_file():
            return None  # open_clip raises its own clear error for the missing file
        model_cfg = json.loads(cfg_file.read_text(encoding="utf-8")).get("model_cfg", {})
        return bool(model_cfg.get("quick_gelu", False))
    if model_name.startswith("hf-hub:"):
        return _hub_quick_gelu(model_name[len("hf-hub:"):])
    tag = None if pretrained in (None, "", "none", "None") else pretrained
    if tag is None:
        return None
    if Path(tag).expanduser().is_file():
        return True if _jit_archive(str(Path(tag).expanduser())) else None
    pcfg = open_clip.get_pretrained_cfg(model_name.replace("/", "-"), tag)
    return bool(pcfg.get("quick_gelu", False)) if pcfg else None


def _hub_quick_gelu(repo: str) -> bool | None:
    """``quick_gelu`` of a hub repo's open_clip_config.json; None when it cannot be read
    (open_clip then fails on the same download with its own message)."""
    try:
        from huggingface_hub import hf_hub_download

        cfg = json.loads(Path(hf_hub_download(repo, "open_clip_config.json")).read_text("utf-8"))
    except Exception:  # noqa: BLE001 - any failure here resurfaces in create_model
        return None
    return bool(cfg.get("model_cfg", {}).get("quick_gelu", False))


def uses_quick_gelu(module: torch.nn.Module) -> bool:
    """Whether a built tower's MLPs use QuickGELU (and no nn.GELU): the built fact, not the config."""
    from open_clip.transformer import QuickGELU

    kinds = {type(m) for m in module.modules()}
    return QuickGELU in kinds and torch.nn.GELU not in kinds


def load_image_tower(model_name: str, pretrained: str | None, device: str = "cpu",
                     quick_gelu: bool = True) -> ImageTower:
    """Image tower of an open_clip model: ``("ViT-B-32", "openai")``, a checkpoint file as
    ``pretrained``, or ``"local-dir:/folder"`` (open_clip_config.json + weights).

    ``pretrained`` empty or "none" gives random weights (benchmarks).

    The tower is built with QuickGELU when ``quick_gelu`` (the default: M-CLIP was
    distilled against OpenAI's ViT-B/32, whose blocks use QuickGELU, and LAION's
    0.26 threshold is that model's cosine), whatever the open_clip config name
    defaults to (``ViT-B-32`` is nn.GELU). Weights that declare the other
    activation are a :class:`ModelLoadError`, and so is a built tower whose
    activation is not the one asked for.
    """
    import open_clip

    declared = declared_quick_gelu(model_name, pretrained)
    if declared is not None and declared != quick_gelu:
        raise ModelLoadError(
            f"image weights {model_name!r} (pretrained={pretrained!r}) were trained with "
            f"{_act(declared)}, but this tower is built with {_act(quick_gelu)}; the mclip "
            "scorer needs OpenAI's ViT-B/32 (QuickGELU) weights, e.g. image_model ViT-B-32 with "
            "image_pretrained openai"
        )
    tag = None if pretrained in (None, "", "none", "None") else pretrained
    # force_quick_gelu sets it; the keyword (last override) clears it when GELU is asked for.
    kwargs: dict[str, Any] = {"force_quick_gelu": True} if quick_gelu else {"quick_gelu": False}
    try:
        model = open_clip.create_model(model_name, pretrained=tag, device="cpu", **kwargs)
    except (RuntimeError, ValueError, FileNotFoundError) as err:
        raise ModelLoadError(
            f"cannot load image tower {model_name!r} with pretrained={pretrained!r}: {err}"
        ) from None
    pp = open_clip.get_model_preprocess_cfg(model)
    visual = model.visual
    del model  # the CLIP text tower is not needed for scoring
    if uses_quick_gelu(visual) != quick_gelu:
        raise ModelLoadError(
            f"open_clip built {model_name!r} with {_act(not quick_gelu)} although "
            f"{_act(quick_gelu)} was asked for; this open_clip release ignores the override"
        )
    size = pp.get("size", 224)
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    visual.eval().to(device)
    with torch.inference_mode():
        probe = visual(torch.zeros(1, 3, size, size, device=device))
    return ImageTower(
        module=visual,
        image_size=size,
        mean=tuple(pp.get("mean", (0.48145466, 0.4578275, 0.40821073))),
        std=tuple(pp.get("std", (0.26862954, 0.26130258, 0.27577711))),
        embed_dim=int(probe.shape[-1]),
    )


def _act(quick_gelu: bool) -> str:
    return "QuickGELU" if quick_gelu else "nn.GELU"
