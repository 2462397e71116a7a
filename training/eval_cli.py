"""`zhclip eval`: a trained model on a retrieval benchmark or a zero-shot image folder.

    zhclip eval --model export.pt --data MUGE/ --split valid --out metrics.json
    zhclip eval --model onnx_dir/ --data MUGE/ --split valid --out metrics.json
    zhclip eval --model ckpt-000100.pt --data imagenet_val/ --task zeroshot \\
        --classnames label_cn.txt --out zs.json --save-features feats/

Retrieval writes ``t2i_r1 .. i2t_r10`` and ``mean_recall`` (percent); zero-shot
writes ``top1`` / ``top5``. ``--save-features DIR`` keeps the L2-normalised
features (``.npy``, row order), ``index.json`` (their ids), and for retrieval
the top-10 prediction files in the format Chinese-CLIP's evaluation scripts read
(``t2i_predictions.jsonl``, ``i2t_predictions.jsonl``), so a score can be checked
by the reference implementation. ``--write-wds DIR`` writes the benchmark in
CLIP_benchmark's webdataset layout (training.clip_benchmark_layout), so its own CLI
can score an open_clip export of the same model on the same data.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from zhclip.pipeline.core.errors import UsageError
from zhclip.training.benchmarks import FORMATS

log = logging.getLogger(__name__)
TASK_RETRIEVAL, TASK_ZEROSHOT = "retrieval", "zeroshot"
PREDICTION_K = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a zhclip export (export.pt), training "
                        "checkpoint, or `zhclip export --format onnx` folder (run on onnxruntime)")
    parser.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                        help="which graphs of an ONNX folder to run (fp16 needs --fp16 at export)")
    parser.add_argument("--data", required=True, help="benchmark folder")
    parser.add_argument("--task", choices=(TASK_RETRIEVAL, TASK_ZEROSHOT), default=TASK_RETRIEVAL)
    parser.add_argument("--format", default="auto", choices=("auto", *FORMATS),
                        help="retrieval layout (default: detected from the folder's files)")
    parser.add_argument("--split", help="benchmark split (test, valid; val for zhclip shards)")
    parser.add_argument("--classnames", help="zero-shot: Chinese class names, one a line "
                        "(default: DATA/classnames.txt or DATA/label_cn.txt)")
    parser.add_argument("--templates", help="zero-shot: prompt templates, one a line with {} "
                        "(default: zhclip's built-in Chinese templates)")
    parser.add_argument("--out", required=True, help="metrics JSON file to write")
    parser.add_argument("--save-features", metavar="DIR", help="also write features and predictions here")
    parser.add_argument("--write-wds", metavar="DIR", help="also write the benchmark in "
                        "CLIP_benchmark's webdataset layout (split test), for "
                        "`clip_benchmark eval --dataset wds/NAME --dataset_root DIR`")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")


def main(args: argparse.Namespace, beam_args: list[str]) -> int:
    if beam_args:
        raise UsageError(f"zhclip eval does not take {' '.join(beam_args)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch
    from zhclip.training.benchmarks import BenchmarkError
    from zhclip.training.zeroshot import TemplateError

    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    try:
        run = evaluate_retrieval if args.task == TASK_RETRIEVAL else evaluate_zeroshot
        metrics = run(args, device)
    except (BenchmarkError, TemplateError, ValueError) as err:
        print(f"zhclip eval: error: {err}", file=sys.stderr)
        return 1
    write_json(Path(args.out), metrics)
    print(json.dumps(metrics, ensure_ascii=False))
    return 0


# ---- shared steps --------------------------------------------------------------


def write_json(path: Path, obj: Any) -> None:
    """Write via a temporary name and rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def _load_model(args: argparse.Namespace, device):
    from zhclip.training.onnx_model import is_onnx_folder, load_onnx_export

    if is_onnx_folder(args.model):  # the deployable artefact, run on onnxruntime
        model, tokenizer, transform = load_onnx_export(args.model, device, args.precision)
        log.info("loaded ONNX %s graphs from %s", args.precision, args.model)
        return model, tokenizer, transform
    from zhclip.training.export import load_export

    model, tokenizer, transform = load_export(args.model, device)
    log.info("loaded %s (%s)", args.model, model.spec.get("image_model", "model"))
    return model, tokenizer, transform


# ---- retrieval --------------------------------------------------------------------


def evaluate_retrieval(args: argparse.Namespace, device) -> dict[str, Any]:
    from zhclip.training.benchmarks import read_retrieval
    from zhclip.training.evaluate import (
        check_finite,
        embed_captions,
        embed_image_stream,
        retrieval_metrics,
    )

    bench = read_retrieval(args.data, args.format, args.split)
    log.info("%s: %d images, %d captions (%s)", args.data, len(bench.image_ids), len(bench.texts),
             bench.format)
    if args.write_wds:
        from zhclip.training.clip_benchmark_layout import write_retrieval

        log.info("CLIP_benchmark layout in %s: %s", args.write_wds, write_retrieval(bench, args.write_wds))
    model, tokenizer, transform = _load_model(args, device)
    image_features = embed_image_stream(model, transform, bench.read_images(), device, args.batch_size)
    if image_features.shape[0] != len(bench.image_ids):
        raise ValueError(f"read {image_features.shape[0]} images, the index lists {len(bench.image_ids)}")
    text_features = embed_captions(model, tokenizer, bench.texts, device, args.batch_size)
    check_finite("image", image_features)
    check_finite("text", text_features)
    if args.save_features:
        save_retrieval_features(Path(args.save_features), bench, image_features, text_features)
    metrics = retrieval_metrics(image_features, text_features, bench.text_to_images)
    return {"task": TASK_RETRIEVAL, "data": str(args.data), "format": bench.format,
            "split": args.split, "model": str(args.model), **metrics}


def save_retrieval_features(folder: Path, bench, image_features, text_features) -> None:
    """Features, their ids, and Chinese-CLIP-format top-10 predictions both ways."""
    import numpy as np
    from zhclip.training.evaluate import top_k

    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "image_features.npy", image_features.numpy())
    np.save(folder / "text_features.npy", text_features.numpy())
    write_json(folder / "index.json", {"image_ids": bench.image_ids, "text_ids": bench.text_ids})
    t2i = top_k(text_features, image_features, PREDICTION_K).tolist()
    i2t = top_k(image_features, text_features, PREDICTION_K).tolist()
    with (folder / "t2i_predictions.jsonl").open("w", encoding="utf-8") as f:
        for text_id, rows in zip(bench.text_ids, t2i, strict=True):
            f.write(json.dumps({"text_id": text_id, "image_ids": [bench.image_ids[r] for r in rows]}) + "\n")
    with (folder / "i2t_predictions.jsonl").open("w", encoding="utf-8") as f:
        for image_id, rows in zip(bench.image_ids, i2t, strict=True):
            f.write(json.dumps({"image_id": image_id, "text_ids": [bench.text_ids[r] for r in rows]}) + "\n")


# ---- zero-shot classification ---------------------------------------------------------


def evaluate_zeroshot(args: argparse.Namespace, device) -> dict[str, Any]:
    from zhclip.training.benchmarks import read_image_folder
    from zhclip.training.evaluate import embed_image_stream
    from zhclip.training.zeroshot import (
        DEFAULT_TEMPLATES,
        class_features,
        classification_metrics,
        read_templates,
    )

    data = read_image_folder(args.data, args.classnames)
    templates = read_templates(args.templates) if args.templates else list(DEFAULT_TEMPLATES)
    log.info("%s: %d images in %d classes, %d templates", args.data, len(data.paths),
             len(data.classnames), len(templates))
    if args.write_wds:
        from zhclip.training.clip_benchmark_layout import write_classification

        log.info("CLIP_benchmark layout in %s: %s", args.write_wds,
                 write_classification(data, templates, args.write_wds))
    model, tokenizer, transform = _load_model(args, device)
    classes = class_features(model, tokenizer, data.classnames, templates, device, args.batch_size)
    image_features = embed_image_stream(model, transform, data.read_images(), device, args.batch_size)
    metrics = classification_metrics(image_features, classes, data.labels)
    if args.save_features:
        import numpy as np

        folder = Path(args.save_features)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "image_features.npy", image_features.numpy())
        np.save(folder / "class_features.npy", classes.numpy())
        write_json(folder / "index.json", {
            "images": [str(p.relative_to(args.data)) for p in data.paths], "labels": data.labels,
            "classes": data.folders, "classnames": data.classnames, "templates": templates})
    return {"task": TASK_ZEROSHOT, "data": str(args.data), "model": str(args.model),
            "templates": len(templates), **metrics}
