"""`zhclip export`: write a zhclip export (or checkpoint) as a Chinese-CLIP
checkpoint or a transformers ChineseCLIPModel folder.

``zhclip export runs/demo/train/export.pt --format hf --output runs/demo/hf``.
A format that cannot hold the model exactly is refused with the reason.
"""

from __future__ import annotations

import argparse

from zhclip.pipeline.core.errors import UsageError
from zhclip.training.convert import FORMATS, CannotConvert, export_to
from zhclip.training.export import read_weights_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a zhclip export (export.pt) or training checkpoint")
    parser.add_argument("--format", required=True, choices=FORMATS,
                        help="cn_clip: Chinese-CLIP checkpoint + model configs; "
                             "hf: transformers ChineseCLIPModel folder with its processor")
    parser.add_argument("--output", required=True, help="folder to write")


def main(args: argparse.Namespace, beam_args: list[str]) -> int:
    if beam_args:
        raise UsageError(f"zhclip export does not take {' '.join(beam_args)}")
    data = read_weights_file(args.model)
    try:
        written = export_to(args.format, data, args.output)
    except CannotConvert as err:
        raise UsageError(str(err)) from None
    print(f"wrote {args.format} model: {written}")
    return 0
