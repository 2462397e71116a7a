"""`zhclip export`: write a zhclip export (or checkpoint) in the formats people deploy with.

``zhclip export runs/demo/train/export.pt --format hf --output runs/demo/hf``.

- ``cn_clip``: a Chinese-CLIP checkpoint + model configs (training.convert);
- ``hf``: a transformers ChineseCLIPModel folder with its processor (training.convert);
- ``open_clip``: a folder ``open_clip.create_model_and_transforms("local-dir:DIR")``
  loads (training.export_open_clip);
- ``onnx``: ``image.onnx`` and ``text.onnx`` with dynamic batch (and text length)
  axes, optionally float16 copies, with preprocessing and tokenizer files
  (training.export_onnx); ``zhclip eval --model DIR`` runs them on onnxruntime.

A format that cannot hold the model exactly is refused with the reason, in one line.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from zhclip.pipeline.core.errors import UsageError
from zhclip.training.export_onnx import DEFAULT_OPSET


def _cn_clip_or_hf(fmt: str) -> Callable[[Mapping[str, Any], Path, argparse.Namespace], Path]:
    def write(data: Mapping[str, Any], out: Path, args: argparse.Namespace) -> Path:
        from zhclip.training.convert import export_to

        return export_to(fmt, data, out)

    return write


def _open_clip(data: Mapping[str, Any], out: Path, args: argparse.Namespace) -> Path:
    from zhclip.training.export_open_clip import write_open_clip

    return write_open_clip(data, out)


def _onnx(data: Mapping[str, Any], out: Path, args: argparse.Namespace) -> Path:
    from zhclip.training.export_onnx import write_onnx

    opset = DEFAULT_OPSET if args.opset is None else args.opset
    return write_onnx(data, out, fp16=args.fp16, opset=opset)


# format -> writer(data, output folder, parsed args); each raises CannotConvert to refuse
WRITERS: dict[str, Callable[[Mapping[str, Any], Path, argparse.Namespace], Path]] = {
    "cn_clip": _cn_clip_or_hf("cn_clip"),
    "hf": _cn_clip_or_hf("hf"),
    "open_clip": _open_clip,
    "onnx": _onnx,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a zhclip export (export.pt) or training checkpoint")
    parser.add_argument(
        "--format",
        required=True,
        choices=tuple(WRITERS),
        help="cn_clip: Chinese-CLIP checkpoint + model configs; "
        "hf: transformers ChineseCLIPModel folder with its processor; "
        "open_clip: an open_clip local-dir: folder; "
        "onnx: image.onnx + text.onnx with dynamic batch axes",
    )
    parser.add_argument("--output", required=True, help="folder to write")
    parser.add_argument(
        "--fp16",
        action="store_true",
        help="onnx: also write float16 graphs (image.fp16.onnx, text.fp16.onnx)",
    )
    parser.add_argument(
        "--opset",
        type=int,
        help=f"onnx: the ONNX opset to write (default {DEFAULT_OPSET})",
    )


def main(args: argparse.Namespace, beam_args: list[str]) -> int:
    if beam_args:
        raise UsageError(f"zhclip export does not take {' '.join(beam_args)}")
    if args.format != "onnx" and (args.fp16 or args.opset is not None):
        raise UsageError("--fp16 and --opset apply to --format onnx only")
    from zhclip.training.export import read_weights_file

    try:
        data = read_weights_file(args.model)
        written = WRITERS[args.format](data, Path(args.output), args)
    except ValueError as err:  # not an export, or CannotConvert: the format cannot hold it
        raise UsageError(str(err)) from None
    print(f"wrote {args.format} model: {written}")
    return 0
