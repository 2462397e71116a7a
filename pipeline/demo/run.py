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

from zhclip.pipeline.core import report as R
from zhclip.pipeline.core.config import config_from_dict, load_config
from zhclip.pipeline.demo.sample import generate_sample, sample_config

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default="runs/demo", help="output root (default runs/demo)")
    parser.add_argument("--images", type=int, default=240, help="number of sample images")
    parser.add_argument("--train-steps", type=int, default=300,
                        help="tiny-model training steps over both stages (0 skips training)")


def _section(title: str) -> None:
    print(f"\n== {title} ==")


def main(args: argparse.Namespace, beam_args: list[str]) -> int:
    from zhclip.pipeline.download.job import run_download, summary_lines
    from zhclip.pipeline.metadata.job import run_metadata
    from zhclip.pipeline.score.job import run_score

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
    ok = meta["total"]["balanced"] and down["total"]["balanced"] and score["total"]["balanced"]
    inspect_outputs(out)
    if args.train_steps > 0:
        _section(f"training a tiny Chinese CLIP for {args.train_steps} steps (stage 1 LiT, then stage 2)")
        from zhclip.training.cli import train_demo

        rec = train_demo(out, data, args.train_steps)
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


def _shards(*argv: str) -> int:
    """Run one `zhclip shards` subcommand in process."""
    from zhclip.pipeline.inspect import cli as shards_cli

    parser = argparse.ArgumentParser(prog="zhclip shards")
    shards_cli.add_arguments(parser)
    return shards_cli.main(parser.parse_args(list(argv)), [])


def inspect_outputs(out: Path) -> None:
    """What `zhclip shards stats / report / browse` print and write for the demo output."""
    _section(f"zhclip shards stats {out / 'dataset'}")
    _shards("stats", str(out / "dataset"))
    _section(f"zhclip shards report {out}")
    _shards("report", str(out), "--out", str(out / "report"))
    _section(f"zhclip shards browse {out / 'dataset'}")
    _shards("browse", str(out / "dataset"), "--out", str(out / "browse"))
