"""The one YAML config that drives every zhclip command, validated into typed objects.

Unknown keys are errors (a typo must not silently fall back to a default), and
``--set a.b=c`` overrides any key with a YAML-parsed value before validation,
so overrides are checked exactly like the file.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from zhclip.pipeline.core.config_yaml import apply_override, safe_yaml
from zhclip.pipeline.core.errors import ConfigError

SOURCE_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


class _Strict(BaseModel):
    # Attribute docstrings become field descriptions: the README's config
    # reference is generated from them (pipeline/config_doc.py).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


class TranslateConfig(_Strict):
    """EN->ZH translation of COCO / Visual Genome captions."""

    backend: Literal["marian", "lookup"] = "marian"
    """marian: a MarianMT model; lookup: an english<TAB>chinese table."""
    model: str = "Helsinki-NLP/opus-mt-en-zh"
    """Marian model: hub name or local folder."""
    table: str | None = None
    """english<TAB>chinese TSV for the lookup backend."""
    batch_size: int = Field(32, ge=1)
    """Sentences per generate() call."""
    device: str = "auto"
    """auto (CUDA when present), cpu, cuda, cuda:N."""
    max_length: int = Field(128, ge=8)
    """Longest input in tokens; longer sentences are rejected as untranslated."""
    num_beams: int | None = Field(None, ge=1)
    """Beam search width (model default when unset)."""
    cache_size: int = Field(100_000, ge=0)
    """Translations kept per worker, so repeated sentences are translated once."""


class SourceConfig(_Strict):
    """One input source: a kind of file and the paths (globs; local, gs://, hf://) to read."""

    name: str
    """Source name: lowercase letters, digits, '_'; prefixes every sample key."""
    kind: Literal["laion", "wukong", "coco", "visual_genome", "generic"]
    """Reader: laion parquet, wukong CSV, coco captions json (or COCO-CN txt), visual_genome regions, generic."""
    paths: list[str] = Field(min_length=1)
    """Files or globs; relative paths are relative to the config file."""
    languages: list[str] | None = None
    """laion: LANGUAGE values kept (default [zh]); [] keeps every row."""
    holdout_ids: str | list[str] | None = None
    """coco / visual_genome: file(s) of held-out COCO image ids: bare ids, COCO file names, COCO-CN lines, Karpathy dataset_coco.json (test split)."""
    image_data: str | None = None
    """visual_genome: image_data.json (image urls and coco_id)."""
    image_root: str | None = None
    """coco / visual_genome: use file:// URLs of local images under this folder."""
    translate: TranslateConfig | None = None
    """Translate captions EN->ZH before the rules (caption_orig keeps the English)."""
    columns: dict[str, str] = Field(default_factory=dict)
    """generic: zhclip column -> file column (url, caption, id, similarity, width, height, license, nsfw)."""
    format: Literal["auto", "parquet", "csv", "tsv", "jsonl"] = "auto"
    """generic: file format (auto: from the extension)."""
    dedup: Literal["url", "url_caption"] = "url"
    """url: one row per image URL across sources; url_caption: only identical (URL, caption) pairs merge (COCO, VG)."""
    batch_rows: int = Field(100_000, ge=1)
    """Rows per Arrow table moving through the job."""
    mode: Literal["image", "regions"] = "image"
    """visual_genome: image joins an image's translated region phrases into one caption for the whole image (as the Chinese-CLIP authors did); regions keeps one pair per region, cropped to its box in stage 3."""
    max_punsafe: float | None = Field(None, ge=0.0, le=1.0)
    """laion: reject rows whose punsafe is above this (unsafe); off when unset, as in the paper."""
    max_pwatermark: float | None = Field(None, ge=0.0, le=1.0)
    """laion: reject rows whose pwatermark is above this (watermark); off when unset, as in the paper."""

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not SOURCE_NAME_RE.match(v):
            raise ValueError(
                f"source name {v!r} must be lowercase letters, digits and '_' "
                "(it becomes part of every sample key)"
            )
        return v

    @field_validator("columns")
    @classmethod
    def _columns_ok(cls, v: dict[str, str]) -> dict[str, str]:
        allowed = {"url", "caption", "id", "similarity", "width", "height", "license", "nsfw"}
        bad = sorted(set(v) - allowed)
        if bad:
            raise ValueError(f"unknown column mapping keys {bad}; allowed: {sorted(allowed)}")
        return v


class CaptionFilterConfig(_Strict):
    min_chars: int = Field(5, ge=0)
    """Shortest caption kept, in Unicode code points after normalisation (paper: 5)."""
    max_chars: int = Field(50, ge=1)
    """Longest caption kept (paper: 50)."""
    traditional_to_simplified: bool = False
    """Convert Traditional to Simplified Chinese (OpenCC t2s) during normalisation."""


class BlacklistConfig(_Strict):
    lists: list[str] = Field(default_factory=lambda: ["builtin"])
    """Shipped lists: builtin (all), or any of advertising, call_to_action, contact, watermark, filenames, platform."""
    extra_files: list[str] = Field(default_factory=list)
    """Your own list files, same format; the list name is the file stem."""


class UrlFilterConfig(_Strict):
    schemes: list[str] = Field(default_factory=lambda: ["http", "https"])
    """Allowed URL schemes; add file to allow local images (read only under sources' image_root folders)."""
    allow_networks: list[str] = Field(default_factory=list)
    """Private/loopback networks allowed anyway, e.g. [127.0.0.0/8] for tests."""

    @field_validator("allow_networks")
    @classmethod
    def _networks_parse(cls, value: list[str]) -> list[str]:
        """A bad entry is a config error naming it, before any stage starts (not a traceback)."""
        import ipaddress

        for text in value:
            try:
                ipaddress.ip_network(text.strip(), strict=False)
            except ValueError:
                raise ValueError(f"{text!r} is not a network; write it like 127.0.0.0/8 or 10.1.2.3/32") from None
        return value


class LanguageFilterConfig(_Strict):
    require_chinese: bool = True
    """Reject captions that are not Chinese text (no Han character, Japanese kana share, mostly symbols): not_chinese."""
    max_kana_share: float = Field(0.2, ge=0.0, le=1.0)
    """Kana / (Han + kana) above this marks a caption as Japanese."""
    min_text_share: float = Field(0.5, ge=0.0, le=1.0)
    """Letters and digits / non-space characters below this mark a caption as symbol junk."""


class FiltersConfig(_Strict):
    caption: CaptionFilterConfig = Field(default_factory=CaptionFilterConfig)
    """Caption normalisation and the length rule."""
    blacklist: BlacklistConfig = Field(default_factory=BlacklistConfig)
    """Caption blacklists."""
    urls: UrlFilterConfig = Field(default_factory=UrlFilterConfig)
    """URL checks (also enforced on every connection by the download stage)."""
    language: LanguageFilterConfig = Field(default_factory=LanguageFilterConfig)
    """The Chinese-text check (beyond the paper; on by default)."""


class MetadataConfig(_Strict):
    """Stage 1 layout knobs."""

    rows_per_shard: int = Field(10_000, ge=1)
    """Rows per URL shard (one img2dataset download shard)."""
    dedup_buckets: int = Field(16, ge=1)
    """Hash buckets for URL dedup: the shuffle's parallelism (about one per 200k rows at full scale)."""
    group_rows: int = Field(100_000, ge=1)
    """Most rows a dedup or write step holds at once; larger buckets are split by hash into groups this size."""


class DownloadConfig(_Strict):
    image_size: int = Field(224, ge=8)
    """Output image side (224; 336 for ViT-L/14@336px)."""
    resize_mode: Literal["no", "keep_ratio", "keep_ratio_largest", "center_crop", "border"] = (
        "center_crop"
    )
    """img2dataset resize mode."""
    encode_format: Literal["jpg", "png", "webp"] = "jpg"
    """Stored image format."""
    encode_quality: int = Field(95, ge=1, le=100)
    """Encoder quality."""
    min_image_size: int = 0
    """Smallest accepted original side in pixels."""
    max_image_area: float = 178_956_970.0
    """Largest accepted original area (PIL's decompression-bomb limit by default)."""
    max_aspect_ratio: float = 10.0
    """Largest accepted original aspect ratio."""
    timeout: float = Field(10, gt=0)
    """Seconds per request."""
    deadline: float | None = Field(None, gt=0)
    """Seconds one image may take in all (connect, headers, body); a host sending a
    byte a second never trips the per-read timeout. Default (null): 3 x timeout."""
    retries: int = Field(1, ge=0)
    """Retries per URL."""
    thread_count: int = Field(32, ge=1)
    """Download threads per shard."""
    max_per_host: int | None = Field(None, ge=1)
    """Most requests one shard has open to one host at once; a thread over it waits for a
    slot inside the image's deadline. Null: no limit, as plain img2dataset."""
    user_agent_token: str | None = "zhclip"
    """Token added to the User-Agent so site owners can identify the crawler."""
    disallowed_header_directives: list[str] = Field(
        default_factory=lambda: ["noai", "noimageai", "noindex", "noimageindex"]
    )
    """X-Robots-Tag directives that opt an image out."""
    compute_hash: Literal["sha256", "md5", "sha512"] | None = "sha256"
    """Hash stored per image."""


#: The paper's only score rule: LAION pairs below an mCLIP cosine of 0.26 are dropped.
DEFAULT_THRESHOLDS: dict[str, float] = {"laion": 0.26}


class SafetyConfig(_Strict):
    enabled: bool = False
    """Score every image that passed the other stage-3 rules with NudeNet's detector (pip install 'zhclip[safety]'); off as in the paper."""
    threshold: float = Field(0.6, gt=0.0, le=1.0)
    """Reject as unsafe_image when any listed class is detected at this confidence or above."""
    classes: list[str] = Field(default_factory=lambda: [
        "FEMALE_BREAST_EXPOSED", "FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED",
        "BUTTOCKS_EXPOSED", "ANUS_EXPOSED"])
    """NudeNet classes that count as unsafe; the detected ones go to the reject's matched column."""
    batch_size: int = Field(32, ge=1)
    """Images per detector call."""


class ScoreConfig(_Strict):
    backend: Literal["mclip", "precomputed", "zhclip"] = "mclip"
    """mclip: M-CLIP text + CLIP image tower; precomputed: the source's similarity column; zhclip: your trained export."""
    model: str = "M-CLIP/XLM-Roberta-Large-Vit-B-32"
    """M-CLIP checkpoint (hub name or folder), or a zhclip export for backend zhclip."""
    image_model: str = "ViT-B-32"
    """open_clip image tower for mclip."""
    image_pretrained: str = "openai"
    """open_clip pretrained tag or a local checkpoint file."""
    batch_size: int = Field(64, ge=1)
    """Pairs per model call."""
    device: str = "auto"
    """auto (CUDA with bf16 when present), cpu, cuda."""
    thresholds: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    """Minimum score per source kind (laion, wukong, ...) or source name; a name wins over its kind; sources matching neither keep every pair (paper: laion 0.26)."""
    dedup_images: bool = True
    """Drop exact duplicate images by sha256 (smallest key wins)."""
    decontaminate: str | None = None
    """Folder of evaluation images; near-duplicates by perceptual hash are removed (test_overlap)."""
    phash_distance: int = Field(4, ge=0)
    """Largest Hamming distance counted as a near-duplicate."""
    near_duplicates: bool = True
    """Drop re-encoded / resized copies across the corpus by perceptual hash (near_duplicate_image; smallest key wins)."""
    near_duplicate_distance: int = Field(0, ge=0, le=15)
    """Largest Hamming distance between the phashes of near-duplicate images (0: exact 64-bit match; k > 0 groups through k+1 bands)."""
    decode_workers: int | None = Field(None, ge=0)
    """Processes that decode + CLIP-preprocess the next batch while the model runs; null: auto (CPU cores minus torch threads), 0: in one thread, as before."""
    save_embeddings: bool = False
    """Keep the L2-normalised image and text embeddings scoring computes: OUT/embeddings/{img_emb,text_emb,metadata}/, one file each per final shard in clip-retrieval's layout (autofaiss reads it as-is; `zhclip search` answers from it). Needs a model backend, not precomputed."""
    safety: SafetyConfig = Field(default_factory=SafetyConfig)
    """Optional image-safety rule (unsafe_image), run last, on images that survived the cheaper rules."""


class ShardsConfig(_Strict):
    samples_per_shard: int = Field(10_000, ge=1)
    """Samples per final webdataset tar."""
    val_fraction: float = Field(0.001, ge=0.0, le=1.0)
    """Share of samples in the val split, chosen by key hash."""


class Config(_Strict):
    output: str = "runs/zhclip"
    """Output root OUT (local or gs://); every stage writes under it."""
    sources: list[SourceConfig] = Field(default_factory=list)
    """Input sources."""
    filters: FiltersConfig = Field(default_factory=FiltersConfig)
    """Stage 1 text and URL rules."""
    metadata: MetadataConfig = Field(default_factory=MetadataConfig)
    """Stage 1 output layout."""
    download: DownloadConfig = Field(default_factory=DownloadConfig)
    """Stage 2 (img2dataset) settings."""
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    """Stage 3 scoring and filtering."""
    shards: ShardsConfig = Field(default_factory=ShardsConfig)
    """Final shard layout."""
    train: dict[str, Any] = Field(default_factory=dict)
    """Training settings, validated by training/ (see `zhclip train --help`)."""

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, v: list[SourceConfig]) -> list[SourceConfig]:
        names = [s.name for s in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"source names must be unique; repeated: {dup}")
        return v

    @model_validator(mode="after")
    def _thresholds_match_sources(self) -> Config:
        """A threshold key that names no configured source or kind would filter nothing,
        silently (the paper's LAION rule lost to a renamed source), so it is an error.

        Checked only when sources are configured (a run without them, on a bare
        download folder, matches keys to the shards' source names). The default
        entry ``laion: 0.26`` is allowed without a LAION source: it fits any config,
        and a config dumped and read back (as workers do) carries it explicitly.
        """
        if not self.sources:
            return self
        known = {s.name for s in self.sources} | {s.kind for s in self.sources}
        unmatched = sorted(k for k, v in self.score.thresholds.items()
                           if k not in known and DEFAULT_THRESHOLDS.get(k) != v)
        if unmatched:
            listed = ", ".join(f"{s.name} ({s.kind})" for s in self.sources)
            raise ValueError(
                f"score.thresholds {unmatched} match no source name or kind; sources: {listed}"
            )
        return self


SOURCE_KINDS: tuple[str, ...] = get_args(SourceConfig.model_fields["kind"].annotation)


def format_validation_error(err: ValidationError, origin: str, prefix: str = "") -> str:
    """One line per problem, each naming the dotted key (with ``prefix``)."""
    lines = [f"invalid config ({origin}):"]
    for e in err.errors():
        loc = prefix + ".".join(str(p) for p in e["loc"])
        if not e["loc"]:  # a whole-config rule: its message names the keys itself
            lines.append(f"  {e['msg'].removeprefix('Value error, ')}")
        elif e["type"] == "extra_forbidden":
            lines.append(f"  unknown key '{loc}' (check the spelling; see README 'Configuration')")
        else:
            lines.append(f"  '{loc}': {e['msg']}")
    return "\n".join(lines)


def config_from_dict(
    data: dict[str, Any], overrides: list[str] | None = None, origin: str = "<dict>"
) -> Config:
    data = copy.deepcopy(data or {})
    for assignment in overrides or []:
        apply_override(data, assignment)
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, origin)) from None


def config_from_args(args) -> Config:
    """The config of a parsed command line: --config, --set, and --output if the command has it."""
    overrides = list(getattr(args, "overrides", []) or [])
    if getattr(args, "output", None):
        overrides.append(f"output={args.output}")
    return load_config(getattr(args, "config", None), overrides)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config, apply ``--set`` overrides and validate.

    Relative source paths are resolved against the config file's folder, so a
    config and its data can move together.
    """
    if path is None:
        return config_from_dict({}, overrides, origin="defaults")
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = safe_yaml(p.read_text(encoding="utf-8"), f"config {path}") or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping at the top level")
    cfg = config_from_dict(data, overrides, origin=str(path))
    return resolve_relative_paths(cfg, p.parent)


def _resolve(base: Path, value: str | None) -> str | None:
    if value is None or "://" in value or Path(value).is_absolute():
        return value
    return str((base / value).resolve())


def resolve_relative_paths(cfg: Config, base: Path) -> Config:
    for src in cfg.sources:
        src.paths = [_resolve(base, p) for p in src.paths]
        src.holdout_ids = (_resolve(base, src.holdout_ids) if not isinstance(src.holdout_ids, list)
                           else [_resolve(base, h) for h in src.holdout_ids])
        src.image_data = _resolve(base, src.image_data)
        src.image_root = _resolve(base, src.image_root)
        if src.translate and src.translate.table:
            src.translate.table = _resolve(base, src.translate.table)
        if src.translate and (base / src.translate.model).exists():
            # a local model folder next to the config; hub names stay as they are
            src.translate.model = _resolve(base, src.translate.model)
    cfg.filters.blacklist.extra_files = [
        _resolve(base, f) for f in cfg.filters.blacklist.extra_files
    ]
    return cfg


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return cfg.model_dump(mode="json")
