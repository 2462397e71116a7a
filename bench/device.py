"""One prepared device run: M-CLIP-sized scoring and Chinese CLIP training, one JSON file.

    python bench/device.py --out device.json           # CUDA: real tower sizes, bf16 (< 8 min)
    python bench/device.py --small --out small.json    # CPU: tiny towers, a few steps (CI)

A GPU is lent for minutes, so everything the issue asks to measure runs in one
call and lands in one file:

scoring: random-init towers of M-CLIP's real sizes (XLM-R Large text tower,
  ViT-B/32 image tower; built from configs, loaded through the real loaders),
  224 px JPEGs from :mod:`zhclip.pipeline.demo.synthetic`. ``model_pairs_per_s``
  is the scorer on pre-decoded pixels; ``step_pairs_per_s`` is
  :class:`~zhclip.pipeline.score.steps.ShardScorer` on the download shards
  (read tar + parquet, decode, preprocess, score, rules) with its defaults:
  decode workers sized to the free cores, JPEG decode on the device on CUDA.
training: ViT-B/16 + RoBERTa-wwm-base (random init) at a per-GPU batch of 256
  (Table 8's 32,768 over 128 GPUs), zhclip stage 1 (image tower locked) and
  stage 2 against open_clip's own ``train_one_epoch`` with the same vision
  tower, a text transformer of the BERT's shape, same batch, precision and
  AdamW, in this process (helpers shared with bench/train.py).

--small swaps in tiny towers and few steps so the whole run takes seconds on
CPU; its figures show the plumbing works, not what a GPU does. ``measured_on``
says which it was; nothing in the file is estimated.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(BENCH))

import score as score_bench  # noqa: E402  (bench/score.py)
import torch  # noqa: E402
import train as train_bench  # noqa: E402  (bench/train.py)
from zhclip.filters import images as I  # noqa: E402
from zhclip.pipeline.core.config import config_from_dict  # noqa: E402
from zhclip.pipeline.demo.synthetic import ZH_CAPTIONS, Row, make_jpeg, write_download_shard  # noqa: E402
from zhclip.pipeline.score.backends import build_scorer  # noqa: E402
from zhclip.pipeline.score.steps import ShardScorer  # noqa: E402
from zhclip.pipeline.shards import downloads as DL  # noqa: E402
from zhclip.pipeline.shards import format as SH  # noqa: E402

# --small sizes: enough layers to exercise every code path, seconds on one core.
TINY_VIT = {"image_size": 224, "layers": 2, "width": 64, "patch_size": 32, "head_width": 32}
TINY_BERT = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 128}


def _sync(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()


def _gib(cuda: bool) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 3) if cuda else None


def score_models(root: Path, small: bool) -> dict[str, str]:
    """ScoreConfig overrides for the towers: tiny ones (--small) or M-CLIP's real shapes."""
    from zhclip.pipeline.score.tiny_mclip import build_tiny_mclip, build_tiny_open_clip

    if small:
        mclip = build_tiny_mclip(root / "mclip", hidden=64, layers=2, out_dim=64)
        image = build_tiny_open_clip(root / "open_clip", embed_dim=64, image_size=224, width=64,
                                     layers=2, patch_size=32)
        return {"model": str(mclip), "image_model": f"local-dir:{image}", "image_pretrained": ""}
    return {"model": str(score_bench.build_large_mclip(root / "mclip")), "image_model": "ViT-B-32",
            "image_pretrained": ""}


def write_jpeg_downloads(folder: Path, pairs: int, shards: int) -> None:
    per = max(1, pairs // shards)
    for s in range(shards):
        rows = [Row(key=f"wukong_{s:03d}{i:06d}", caption=ZH_CAPTIONS[i % len(ZH_CAPTIONS)],
                    image=make_jpeg(s * per + i, size=224)) for i in range(per)]
        write_download_shard(folder, f"{s:05d}", rows, seed=s)


def bench_scoring(root: Path, small: bool, cuda: bool) -> dict[str, Any]:
    pairs, n_shards, batch = (64, 2, 16) if small else (32768, 8, 1024)
    t0 = time.perf_counter()
    models = score_models(root / "models", small)
    downloads = root / "out" / SH.DOWNLOADS_DIR
    write_jpeg_downloads(downloads, pairs, n_shards)
    cfg = config_from_dict({
        "output": str(root / "out"),
        "score": {"backend": "mclip", **models, "batch_size": batch,
                  "device": "cuda" if cuda else "cpu", "thresholds": {}},
    })
    scorer = build_scorer(cfg.score)
    setup_s = time.perf_counter() - t0
    shards = DL.list_download_shards(str(downloads))
    samples = [s for sh in shards for s in DL.read_download_shard(sh).samples]
    arrays = [scorer.preprocess(I.decode_image(s.image)) for s in samples]
    captions = [s.caption for s in samples]
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    model = score_bench.forward_only(scorer, arrays, captions)

    steps = ShardScorer(scorer, cfg.score, 0.0, [], thresholds={})
    steps.score_shard(shards[0])  # warm-up: worker processes, nvJPEG handles, allocator
    _sync(cuda)
    t1 = time.perf_counter()
    n = sum(len(steps.score_shard(sh)[0].kept) for sh in shards)
    _sync(cuda)
    step = n / (time.perf_counter() - t1)
    info = {"decode_workers": steps.decode_workers, "device_decode": steps.device_decode}
    steps.close()
    return {"pairs": len(samples), "shards": n_shards, "batch_size": batch,
            "text_tower": "tiny XLM-R" if small else "XLM-R Large (random init)",
            "image_tower": "tiny ViT/32" if small else "ViT-B/32 (random init)",
            "model_pairs_per_s": round(model, 2), "step_pairs_per_s": round(step, 2),
            "step_over_model": round(step / model, 4), "gpu_memory_gib": _gib(cuda),
            "setup_seconds": round(setup_s, 1), **info}


def bench_training(root: Path, small: bool, cuda: bool) -> dict[str, Any]:
    batch, steps, repeats = (4, 2, 1) if small else (256, 20, 3)
    if small:
        # bench/train.py's CPU towers, shrunk further: seconds, not minutes, in CI.
        train_bench.SMALL_VIT.update(TINY_VIT)
        train_bench.SMALL_BERT.update(TINY_BERT)
    image, bert, vision = train_bench.write_towers(root, cuda=not small)
    trainer = train_bench.zhclip_trainer(root, image, bert, batch, cuda)
    device = torch.device("cuda" if cuda else "cpu")
    data = train_bench.make_batch(trainer, batch, device)
    oc = train_bench.open_clip_setup(vision, bert, data, device, cuda)  # identical towers
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    runs: dict[str, list[float]] = {"zhclip_stage1": [], "zhclip_stage2": [], "open_clip": [],
                                    "stage2_eager": []}
    for _ in range(repeats):  # alternating, so drift from other load hits every side alike
        runs["zhclip_stage1"].append(train_bench.time_zhclip(trainer, 1, data, steps, cuda))
        runs["zhclip_stage2"].append(train_bench.time_zhclip(trainer, 2, data, steps, cuda))
        train_bench.set_attention(trainer.model, train_bench.EAGER)  # SDPA's baseline
        runs["stage2_eager"].append(train_bench.time_zhclip(trainer, 2, data, steps, cuda))
        train_bench.set_attention(trainer.model, train_bench.SDPA)
        runs["open_clip"].append(train_bench.time_open_clip(oc, steps, cuda))
    med = {k: sorted(v)[len(v) // 2] for k, v in runs.items()}
    return {"batch_size": batch, "steps": steps, "repeats": repeats,
            "towers": "tiny ViT/32 + 2-layer BERT-64" if small else
            "ViT-B/16 + RoBERTa-wwm-base (random init)",
            "precision": "bf16" if cuda else "fp32",
            **{f"{k}_samples_per_s": round(v, 2) for k, v in med.items()},
            "zhclip_over_open_clip": round(med["zhclip_stage2"] / med["open_clip"], 4),
            "stage1_over_stage2": round(med["zhclip_stage1"] / med["zhclip_stage2"], 4),
            "sdpa_over_eager": round(med["zhclip_stage2"] / med["stage2_eager"], 4),
            "gpu_memory_gib": _gib(cuda)}


def goals(result: dict[str, Any]) -> dict[str, bool | None]:
    """The issue's goals, checked only against figures measured on CUDA (None otherwise)."""
    cuda = result["measured_on"] == "cuda"
    s, t = result.get("scoring", {}), result.get("training", {})

    def met(part: dict[str, Any], key: str, goal: float) -> bool | None:
        value = part.get(key)
        return value >= goal if cuda and isinstance(value, float) and math.isfinite(value) else None

    return {"step_10k_pairs_per_s": met(s, "step_pairs_per_s", 10_000),
            "step_over_model_0_9": met(s, "step_over_model", 0.9),
            "zhclip_over_open_clip_1_0": met(t, "zhclip_over_open_clip", 1.0),
            "stage1_over_stage2_1_8": met(t, "stage1_over_stage2", 1.8)}


PARTS = {"scoring": lambda root, small, cuda: bench_scoring(root, small, cuda),
         "training": lambda root, small, cuda: bench_training(root, small, cuda)}


def run_part(name: str, root: Path, small: bool, cuda: bool) -> dict[str, Any]:
    """One part's figures, or its error: a device run is one call, so a failure in
    scoring must not cost the training figures (or the other way round)."""
    started = time.perf_counter()
    try:
        figures = PARTS[name](root, small, cuda)
    except Exception as err:  # noqa: BLE001 - recorded in the JSON and in the exit code
        figures = {"error": f"{type(err).__name__}: {err}",
                   "traceback": traceback.format_exc().splitlines()[-12:]}
    figures["part_seconds"] = round(time.perf_counter() - started, 1)
    return figures


def write_result(path: str, result: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--small", action="store_true", help="tiny towers, few steps (CPU, CI)")
    ap.add_argument("--only", choices=["scoring", "training"], default=None)
    a = ap.parse_args(argv)
    cuda = torch.cuda.is_available() and not a.small
    if not a.small and not cuda:
        print("no CUDA device: run with --small for the CPU version", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "measured_on": "cuda" if cuda else "cpu", "small": a.small,
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
    }
    with tempfile.TemporaryDirectory(prefix="zhclip-bench-device-") as tmp:
        root = Path(tmp)
        for name in PARTS:
            if a.only not in (None, name):
                continue
            result[name] = run_part(name, root / name, a.small, cuda)
            print(f"{name}: {json.dumps(result[name])}", flush=True)
            write_result(a.out, result)  # what is measured survives a later crash or time-out
    result["seconds"] = round(time.perf_counter() - t0, 1)
    if a.only is None:
        result["goals"] = goals(result)
    bad = [f"{part}.{k}" for part in PARTS for k, v in result.get(part, {}).items()
           if k == "error" or (isinstance(v, float) and not math.isfinite(v))]
    write_result(a.out, result)
    print(f"wrote {a.out} in {result['seconds']}s" + (f"; failed: {', '.join(bad)}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
