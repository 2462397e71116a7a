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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default="runs/demo", help="output root (default runs/demo)")
    parser.add_argument("--images", type=int, default=240, help="number of sample images")


def main(args: argparse.Namespace, beam_args: list[str]) -> int:
    from pipeline.metadata import run_metadata

    out = Path(args.output).resolve()
    sample_root = out / "sample"
    sample_root.mkdir(parents=True, exist_ok=True)
    with serve_folder(sample_root) as base_url:
        print(f"zhclip demo: writing the sample to {sample_root} (served at {base_url})")
        generate_sample(sample_root, base_url, n_images=args.images)
        data = demo_config_dict(sample_root, out, args.config, args.overrides)
        cfg = config_from_dict(data, args.overrides)
        print("stage 1 (metadata): sources -> rules -> URL dedup -> URL shards")
        report = run_metadata(cfg, beam_args)
        R.print_funnel(report, "stage 1 (metadata) funnel")
        print(f"  URL shards: {report['shards']} in {out / 'metadata'}")
        print(f"  rejects:    {out / 'rejects'}")
        print(f"  report:     {out / 'report' / 'metadata.json'}")
    return 0 if report["total"]["balanced"] else 1
