"""`zhclip demo`: the pipeline on a generated sample, served from loopback.

Everything happens under OUT (default runs/demo): the sample in OUT/sample,
served by a throwaway HTTP server on 127.0.0.1 for the download stage, and
the stage outputs beside it. Running it again regenerates the same sample
and overwrites the same outputs.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

from pipeline import report as R
from pipeline.config import config_from_dict, load_config
from pipeline.sample import generate_sample, sample_config

# Settings a --config file may contribute; the sources always come from the sample.
OVERLAY_KEYS = ("filters", "metadata", "download", "score", "shards", "train")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep the demo's output readable
        pass


@contextlib.contextmanager
def serve_folder(folder: Path) -> Iterator[str]:
    """Serve ``folder`` on 127.0.0.1 (ephemeral port) for the block; yield its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def demo_config_dict(sample_root: Path, output: Path, config_path: str | None,
                     overrides: list[str]) -> dict:
    data = sample_config(sample_root, output)
    if config_path:
        file_cfg = load_config(config_path).model_dump(mode="json", exclude_unset=True)
        for key in OVERLAY_KEYS:
            if key in file_cfg:
                data[key] = file_cfg[key]
    config_from_dict(data, overrides)  # validate early: a bad --set fails before any work
    return data


def demo_train_section(out: Path, captions: list[str], steps: int) -> dict:
    """Tiny towers written to OUT/models and a two-stage schedule for the demo shards."""
    from training.tiny import write_tiny_bert, write_tiny_image_tower

    models = out / "models"
    image = write_tiny_image_tower(models / "image", name="zhclip-demo-vit", image_size=32)
    text = write_tiny_bert(models / "text", captions, hidden=64, layers=2)
    stage1 = max(1, steps // 3)
    return {
        "image": image,
        "text": {"model": str(text)},
        "context_length": 32,
        "data": {"path": str(out / "dataset"), "workers": 0, "shuffle_buffer": 256,
                 "auto_augment": False, "crop_scale": [0.8, 1.0]},
        "stage1": {"steps": stage1, "batch_size": 32, "lr": 2e-3, "warmup": 10},
        "stage2": {"steps": steps - stage1, "batch_size": 32, "lr": 1e-3, "warmup": 10},
        "output": str(out / "train"),
        "eval_at_start": True,
        "eval_every": 100,
        "save_every": 1000,
        "log_every": 50,
        "eval_batch_size": 64,
        "precision": "fp32",
        "device": "cpu",
    }


def _mean_recall(ev: dict | None) -> float:
    return float(ev["mean_recall"]) if ev else float("nan")


def run_demo_training(out: Path, data: dict, steps: int) -> dict:
    """Train the tiny model through both stages on OUT/dataset; return recalls."""
    import pyarrow.compute as pc

    from pipeline import schema as S
    from pipeline import shards as SH
    from training.config import train_config
    from training.runtime import setup_runtime, teardown_runtime
    from training.trainer import train

    table = SH.read_dataset_table(str(out / "dataset"))
    captions = pc.unique(table.column(S.CAPTION)).to_pylist()
    data = dict(data, train=demo_train_section(out, captions, steps))
    cfg = train_config(config_from_dict(data))
    runtime = setup_runtime(cfg.device, cfg.precision)
    try:
        result = train(cfg, runtime)
    finally:
        teardown_runtime(runtime)
    return {"before": _mean_recall(result.get("initial_eval")), "after": _mean_recall(result["eval"]),
            "initial_eval": result.get("initial_eval"), "eval": result["eval"],
            "switched_at": result.get("switched_at"), "output": cfg.output}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default="runs/demo", help="output root (default runs/demo)")
    parser.add_argument("--images", type=int, default=240, help="number of sample images")
    parser.add_argument("--train-steps", type=int, default=300,
                        help="tiny-model training steps over both stages (0 skips training)")


def _section(title: str) -> None:
    print(f"\n== {title} ==")


def main(args: argparse.Namespace, beam_args: list[str]) -> int:
    from pipeline.download import run_download, summary_lines
    from pipeline.metadata import run_metadata
    from pipeline.score import run_score

    out = Path(args.output).resolve()
    sample_root = out / "sample"
    sample_root.mkdir(parents=True, exist_ok=True)
    ok = True
    with serve_folder(sample_root) as base_url:
        print(f"zhclip demo: writing the sample to {sample_root} (served at {base_url})")
        generate_sample(sample_root, base_url, n_images=args.images)
        data = demo_config_dict(sample_root, out, args.config, args.overrides)
        cfg = config_from_dict(data, args.overrides)
        _section("stage 1 (metadata): sources -> rules -> URL dedup -> URL shards")
        meta = run_metadata(cfg, beam_args)
        R.print_funnel(meta, "stage 1 (metadata) funnel")
        _section("stage 2 (download): img2dataset from the loopback server")
        down = run_download(cfg, beam_args, progress=False)
        for line in summary_lines(down):
            print(line)
    _section("stage 3 (score): precomputed scores, 0.26 rule for laion_zh, final shards")
    score = run_score(cfg, beam_args)
    R.print_funnel(score, "stage 3 (score) funnel")
    ok = meta["total"]["balanced"] and down["accounting"]["ok"] and score["total"]["balanced"]
    inspect_outputs(out)
    if args.train_steps > 0:
        _section(f"training a tiny Chinese CLIP for {args.train_steps} steps (stage 1 LiT, then stage 2)")
        rec = run_demo_training(out, data, args.train_steps)
        print(f"validation mean recall before training: {rec['before']:.1f}")
        print(f"validation mean recall after training:  {rec['after']:.1f}"
              f"  (stage 2 from step {rec['switched_at']})")
        print(f"  checkpoints, metrics.csv, eval.jsonl, export.pt: {rec['output']}")
        ok = ok and rec["after"] > rec["before"]
    _section("where to look")
    print(f"  URL shards:     {out / 'metadata'}")
    print(f"  downloads:      {out / 'downloads'}")
    print(f"  final dataset:  {out / 'dataset'}  (webdataset tars + parquet + manifest.json)")
    print(f"  rejects:        {out / 'rejects'}")
    print(f"  reports:        {out / 'report'}")
    return 0 if ok else 1


def inspect_outputs(out: Path) -> None:
    """What `zhclip shards stats / report / browse` print and write for the demo output."""
    from pipeline.cli import main as cli_main

    _section(f"zhclip shards stats {out / 'dataset'}")
    cli_main(["shards", "stats", str(out / "dataset")])
    _section(f"zhclip shards report {out}")
    cli_main(["shards", "report", str(out), "--out", str(out / "report")])
    _section(f"zhclip shards browse {out / 'dataset'}")
    cli_main(["shards", "browse", str(out / "dataset"), "--out", str(out / "browse")])
