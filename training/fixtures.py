"""Test material for training: a synthetic captioned set and tiny towers on disk.

The set is coloured shapes at one of four places, captioned in Chinese
(``左上的红色圆形``), written as real final shards (webdataset tars, parquet
sidecars, manifest.json) by the same writer ``zhclip score`` uses. The towers are
an open_clip ViT / ModifiedResNet and a BERT with a few hundred thousand
weights, saved to disk and loaded by path through the same code as real ones.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw
from zhclip.pipeline.core import schema as S
from zhclip.training import tiny
from zhclip.training.tiny import TINY_RN, TINY_VIT  # noqa: F401  (tests import them from here)

COLOURS = {"红色": (220, 30, 30), "绿色": (30, 180, 40), "蓝色": (30, 60, 220), "黄色": (230, 210, 20)}
SHAPES = ("圆形", "方形", "三角形")
PLACES = {"左上": (0, 0), "右上": (1, 0), "左下": (0, 1), "右下": (1, 1)}


def caption_of(place: str, colour: str, shape: str) -> str:
    return f"{place}的{colour}{shape}"


def draw_sample(place: str, colour: str, shape: str, size: int, rng: random.Random) -> Image.Image:
    """One shape in one quadrant, with jittered size, position and background."""
    bg = tuple(rng.randint(90, 140) for _ in range(3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    qx, qy = PLACES[place]
    half = size // 2
    r = rng.randint(size // 6, size // 4 - 1)
    cx = qx * half + half // 2 + rng.randint(-2, 2)
    cy = qy * half + half // 2 + rng.randint(-2, 2)
    fill = COLOURS[colour]
    if shape == "圆形":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "方形":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


def all_captions() -> list[str]:
    return [caption_of(p, c, s) for p in PLACES for c in COLOURS for s in SHAPES]


def write_vocab(path: Path, extra: list[str] | None = None) -> Path:
    """A WordPiece vocab: BERT's special tokens and every character of the captions."""
    return tiny.write_vocab(path, all_captions() + (extra or []))


def write_shape_dataset(dataset: Path, n_train: int = 512, n_val: int = 48,
                        per_shard: int = 128, size: int = 40, seed: int = 0,
                        corrupt: int = 0) -> dict[str, Any]:
    """Write train/val shards with the project's writer (pipeline.shards); returns the manifest.

    ``corrupt`` train samples get undecodable image bytes, to test that a bad
    sample is skipped with a warning.
    """
    from zhclip.pipeline.shards import format as SH
    from zhclip.pipeline.shards import manifest as MF
    from zhclip.pipeline.shards import writer as SW

    rng = random.Random(seed)
    dataset.mkdir(parents=True, exist_ok=True)
    combos = [(p, c, s) for p in PLACES for c in COLOURS for s in SHAPES]
    written = []
    for split, n in ((SH.SPLIT_TRAIN, n_train), (SH.SPLIT_VAL, n_val)):
        # val walks the combinations in order, so 48 val samples hold each caption once
        picks = [combos[i % len(combos)] for i in range(n)] if split == SH.SPLIT_VAL else [
            rng.choice(combos) for _ in range(n)]
        with SW.ShardWriter(str(dataset), split, samples_per_shard=per_shard) as writer:
            for i, (place, colour, shape) in enumerate(picks):
                buf = io.BytesIO()
                draw_sample(place, colour, shape, size, rng).save(buf, format="JPEG", quality=95)
                data = buf.getvalue()
                if split == SH.SPLIT_TRAIN and i < corrupt:
                    data = b"not a jpeg"
                key = f"synthetic_{split}_{i:06d}"
                meta = {S.SOURCE: "synthetic", S.URL: f"http://127.0.0.1/{key}.jpg",
                        S.CAPTION_ORIG: None, S.SCORE: None, S.WIDTH: size, S.HEIGHT: size,
                        S.SHA256: hashlib.sha256(data).hexdigest()}
                writer.write(SH.ShardSample(key, data, caption_of(place, colour, shape), meta))
        written += writer.written
    manifest = MF.build_manifest(written, config=None)
    MF.write_dataset_files(str(dataset), manifest)
    return manifest


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def write_chinese_clip_benchmark(folder: Path, split: str, images: list[tuple[int, bytes]],
                                 texts: list[tuple[int, str, list[int]]]) -> Path:
    """A retrieval benchmark in Chinese-CLIP's layout (MUGE, Flickr30K-CN, COCO-CN):
    {split}_imgs.tsv (id, urlsafe base64 image) and {split}_texts.jsonl (text_id, text, image_ids)."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / f"{split}_imgs.tsv").open("w", encoding="utf-8") as f:
        for image_id, data in images:
            f.write(f"{image_id}\t{base64.urlsafe_b64encode(data).decode()}\n")
    with (folder / f"{split}_texts.jsonl").open("w", encoding="utf-8") as f:
        for text_id, text, image_ids in texts:
            f.write(json.dumps({"text_id": text_id, "text": text, "image_ids": image_ids},
                               ensure_ascii=False) + "\n")
    return folder


def write_tiny_image_tower(folder: Path, name: str = "Tiny-ViT", cfg: dict | None = None,
                           image_size: int | None = None, seed: int = 0,
                           logit_scale: float | None = None) -> dict[str, str]:
    """The package's tiny open_clip tower (training.tiny), under the tests' name."""
    return tiny.write_tiny_image_tower(folder, name, cfg, image_size, seed, logit_scale)


def write_tiny_bert(folder: Path, seed: int = 0, dropout: float = 0.1) -> Path:
    """A two-layer BERT over the synthetic captions' characters."""
    return tiny.write_tiny_bert(folder, all_captions(), seed=seed, dropout=dropout)


def tiny_train_section(root: Path, image: dict[str, str], bert: Path, /, **over: Any) -> dict[str, Any]:
    """A ``train:`` mapping for the tiny towers and the synthetic set under ``root``."""
    section: dict[str, Any] = {
        "image": image,
        "text": {"model": str(bert)},
        "context_length": 16,
        "data": {"path": str(root / "dataset"), "workers": 0, "shuffle_buffer": 64,
                 "auto_augment": False},
        "stage1": {"steps": 4, "batch_size": 16, "lr": 1e-3, "warmup": 1},
        "stage2": {"steps": 4, "batch_size": 16, "lr": 1e-3, "warmup": 1},
        "output": str(root / "train"),
        "eval_every": 1000,
        "save_every": 1000,
        "log_every": 1,
        "eval_batch_size": 64,
    }
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(section.get(key), dict):
            section[key] = {**section[key], **value}
        else:
            section[key] = value
    return section


# ---- a torchrun worker for the DDP equivalence test ---------------------------------


def ddp_grads_worker(config_json: str, batch_file: str, out_file: str, local_loss: str) -> None:
    """Under torchrun: one DDP step on this rank's half of a batch; save loss and grads."""
    import torch
    from torch.nn.parallel import DistributedDataParallel
    from zhclip.training.config import train_config_from_dict
    from zhclip.training.loss import ContrastiveLoss
    from zhclip.training.model import build_model
    from zhclip.training.runtime import setup_runtime, teardown_runtime

    torch.set_num_threads(1)
    rt = setup_runtime("cpu", "fp32")
    cfg = train_config_from_dict(json.loads(Path(config_json).read_text(encoding="utf-8")))
    torch.manual_seed(0)
    model = build_model(cfg)
    model.unlock_image_tower()
    model.train()
    ddp = DistributedDataParallel(model)
    batch = torch.load(batch_file)
    n = batch["images"].shape[0] // rt.world_size
    part = slice(rt.rank * n, (rt.rank + 1) * n)
    img, txt, scale = ddp(batch["images"][part], batch["input_ids"][part],
                          batch["attention_mask"][part])
    loss = ContrastiveLoss(local_loss=local_loss == "local")(img, txt, scale)
    loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    torch.save({"loss": loss.item(), "grads": grads}, f"{out_file}.{rt.rank}")
    teardown_runtime(rt)


def slow_eval_worker(out_file: str, eval_s: str, group_timeout_s: str) -> None:
    """Under torchrun-style env vars: rank 0 "evaluates" for ``eval_s`` seconds, longer
    than the process group's ``group_timeout_s``; every rank records what it received."""
    import time

    import torch.distributed as dist
    from zhclip.training.runtime import broadcast_from_main, setup_runtime, teardown_runtime

    rt = setup_runtime("cpu", "fp32", eval_timeout_s=120, timeout_s=float(group_timeout_s))

    def evaluation() -> dict[str, float]:
        time.sleep(float(eval_s))
        return {"mean_recall": 42.0}

    t0 = time.perf_counter()
    got = broadcast_from_main(rt, evaluation)
    waited = time.perf_counter() - t0
    dist.barrier()  # the process group is still usable afterwards
    Path(f"{out_file}.{rt.rank}").write_text(json.dumps({"got": got, "waited": waited}))
    teardown_runtime(rt)


if __name__ == "__main__":
    import sys

    if sys.argv[1] == "ddp-grads":
        ddp_grads_worker(*sys.argv[2:6])
    elif sys.argv[1] == "slow-eval":
        slow_eval_worker(*sys.argv[2:5])
