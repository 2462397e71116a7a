"""Training settings: the ``train:`` mapping of the main YAML config, validated.

``pipeline.config.Config.train`` is a free dict so that the pipeline does not
depend on training; this module gives it a schema. Unknown keys are errors, as
everywhere else. Defaults follow the paper's Table 8 and depend on the tower
family (ResNet or ViT), so they are filled in after the pairing is known: any
value the user sets wins, any value left as ``None`` takes the family default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from zhclip.pipeline.core.config import Config, ConfigError, format_validation_error


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ImageTowerConfig(_Strict):
    """An open_clip vision tower.

    ``model`` is an open_clip model name (RN50, ViT-B-16, ViT-L-14, ViT-L-14-336,
    ViT-H-14, or a name registered by ``config_file``). ``pretrained`` is an
    open_clip pretrained tag (``openai``, ``laion2b_s32b_b79k``) or a local
    checkpoint file of a full open_clip CLIP model; ``None`` means random init.
    """

    model: str
    pretrained: str | None = None
    config_file: str | None = None  # open_clip model-config JSON to register first
    quick_gelu: bool | None = None  # None: whatever the pretrained tag needs


class TextTowerConfig(_Strict):
    """A BERT-architecture text tower (Chinese RoBERTa-wwm, RBT3) from transformers.

    ``model`` is a hub name or a local folder saved with ``save_pretrained``.
    ``random_init`` builds the architecture from the folder's config without
    loading its weights (benchmarks, tests of the init path).
    """

    model: str
    random_init: bool = False


class StageConfig(_Strict):
    """One of the two stages. ``None`` fields take the Table 8 default."""

    steps: int = Field(0, ge=0)
    batch_size: int | None = Field(None, ge=1)  # global batch (all ranks, all micro-steps)
    lr: float | None = Field(None, gt=0)
    warmup: int | None = Field(None, ge=0)
    weight_decay: float | None = Field(None, ge=0)
    beta1: float | None = Field(None, gt=0, lt=1)
    beta2: float | None = Field(None, gt=0, lt=1)
    eps: float | None = Field(None, gt=0)
    # Stage 1 only: switch early when val mean recall has not improved by more
    # than ``plateau_delta`` over ``plateau_patience`` evaluations.
    plateau_patience: int | None = Field(None, ge=1)
    plateau_delta: float = Field(0.0, ge=0)


class DataConfig(_Strict):
    """Where the shards are and how they are streamed."""

    path: str | None = None  # folder with manifest.json; default OUT/dataset
    train: str | None = None  # brace pattern or list file overriding the manifest
    val: str | None = None
    glob: bool = False  # no manifest.json: read {split}-*.tar found in path (off: a folder may be stale)
    resampled: bool = False
    shuffle_buffer: int = Field(1000, ge=0)
    workers: int = Field(4, ge=0)
    prefetch: int = Field(4, ge=1)  # batches each loader worker keeps ready (prefetch_factor)
    image_size: int | None = Field(None, ge=8)  # default: the image tower's size
    # the corpus's image resolution (short side); default: measured from the train sidecars
    resolution: int | None = Field(None, ge=1)
    crop_scale: tuple[float, float] = (0.9, 1.0)
    auto_augment: bool = True
    val_max_samples: int | None = Field(None, ge=1)


class TrainConfig(_Strict):
    """Everything under ``train:``."""

    pairing: str | None = None  # a named Table 1 pairing, e.g. ViT-B-16-RoBERTa-base
    image: ImageTowerConfig | None = None
    text: TextTowerConfig | None = None
    tokenizer: str | None = None  # vocab.txt, folder or hub name; default text.model
    context_length: int = Field(52, ge=4)  # Chinese-CLIP's: 50 characters + [CLS]/[SEP]
    data: DataConfig = Field(default_factory=DataConfig)
    stage1: StageConfig = Field(default_factory=lambda: StageConfig(steps=1000))
    stage2: StageConfig = Field(default_factory=lambda: StageConfig(steps=1000))
    # weights to start from: a zhclip export/checkpoint (e.g. 224 -> 336), a Chinese-CLIP
    # checkpoint or a transformers ChineseCLIPModel folder (training.convert reads all three)
    init_from: str | None = None
    output: str | None = None  # default OUT/train
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: str = "auto"
    grad_checkpointing: bool = False
    allow_upscale: bool = False  # train a model whose input is larger than the corpus's images
    compile: bool = False  # torch.compile the forward (CUDA pays off; first steps compile)
    channels_last: bool | None = None  # NHWC images and weights; None: on for ResNet towers on CUDA
    accum_steps: int = Field(1, ge=1)
    grad_clip: float | None = Field(None, gt=0)
    local_loss: bool = False
    nan_policy: Literal["stop", "skip"] = "stop"
    max_skipped_steps: int = Field(10, ge=1)
    eval_every: int = Field(500, ge=1)
    eval_at_start: bool = False  # evaluate the initial model too (a baseline to compare against)
    eval_batch_size: int = Field(256, ge=1)
    eval_timeout_s: int = Field(4 * 3600, ge=1)  # how long the other ranks wait for rank 0's evaluation
    eval_chunk: int = Field(4096, ge=1)
    # What evaluation (and so the stage-1 -> 2 switch) watches: a retrieval benchmark in any
    # layout `zhclip eval --data` reads (Chinese-CLIP's jsonl + tsv for MUGE / Flickr30K-CN /
    # COCO-CN, images + captions, zhclip shards), all its captions counted; None: the val shards.
    eval_data: str | None = None
    eval_format: Literal["auto", "chinese-clip", "folder", "shards"] = "auto"
    eval_split: str | None = None  # the benchmark's split (valid, test, ...); None: its only one
    save_every: int = Field(1000, ge=1)
    keep_checkpoints: int = Field(3, ge=1)
    log_every: int = Field(10, ge=1)
    tensorboard: bool = False
    seed: int = 0
    # `zhclip finetune`'s recipe overrides (training.recipes.Recipe validates them)
    finetune: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _towers_known(self) -> TrainConfig:
        if self.pairing is None and (self.image is None or self.text is None):
            raise ValueError("set train.pairing (see training.model.PAIRINGS) or both train.image and train.text")
        return self


# ---- Table 8 defaults --------------------------------------------------------

STAGE1_DEFAULTS: dict[str, Any] = {
    "batch_size": 32768, "lr": 1e-4, "warmup": 5000, "weight_decay": 1e-3, "beta1": 0.9,
}
STAGE2_LR = 2e-5
# Stage-2 global batch by image tower; ViT-L/14@336 is not in Table 8's stage-2
# column on its own, so it keeps ViT-L/14's value.
STAGE2_BATCH = {"RN50": 16384, "ViT-B-16": 16384, "ViT-L-14": 4608, "ViT-L-14-336": 4608,
                "ViT-H-14": 32768}
FAMILY_ADAM = {"resnet": {"beta2": 0.999, "eps": 1e-8}, "vit": {"beta2": 0.98, "eps": 1e-6}}


def tower_family(image_model: str) -> str:
    """``resnet`` for the RN models, ``vit`` otherwise (Adam betas/eps differ)."""
    return "resnet" if image_model.upper().startswith("RN") else "vit"


def fill_stage_defaults(stage: StageConfig, index: int, image_model: str) -> StageConfig:
    """Return ``stage`` with every unset field replaced by its Table 8 value."""
    defaults = dict(STAGE1_DEFAULTS)
    defaults.update(FAMILY_ADAM[tower_family(image_model)])
    if index == 2:
        defaults["lr"] = STAGE2_LR
        base = image_model.removesuffix("-quickgelu")
        defaults["batch_size"] = STAGE2_BATCH.get(base, STAGE1_DEFAULTS["batch_size"])
    values = stage.model_dump()
    for k, v in defaults.items():
        if values.get(k) is None:
            values[k] = v
    return StageConfig(**values)


def train_config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Validate a ``train:`` mapping; errors name the key, as ConfigError."""
    try:
        return TrainConfig.model_validate(data or {})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, "train section", prefix="train.")) from None


def resolve_paths(cfg: TrainConfig, output_root: str | Path) -> TrainConfig:
    """Fill the path defaults that depend on the pipeline's OUT folder."""
    root = Path(output_root)
    if cfg.data.path is None:
        cfg.data.path = str(root / "dataset")
    if cfg.output is None:
        cfg.output = str(root / "train")
    return cfg


def train_config(config: Config) -> TrainConfig:
    """The validated training settings of a loaded main config."""
    return resolve_paths(train_config_from_dict(config.train), config.output)
