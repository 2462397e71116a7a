"""Write a zhclip model as two ONNX encoders with dynamic batch (and text length) axes.

The folder holds:

- ``image.onnx``: ``pixels`` float32 [batch, 3, S, S] -> ``image_features`` [batch, D];
- ``text.onnx``: ``input_ids``, ``attention_mask`` int64 [batch, length] ->
  ``text_features`` [batch, D]; any length up to the BERT's positions;
- with ``fp16``, ``image.fp16.onnx`` and ``text.fp16.onnx``: the same graphs computing
  in float16 (half the weights' size; meant for GPU runtimes), float32 in and out;
- ``zhclip_onnx.json``: the files, tensor names, opset, and the preprocessing
  (resize the short side to S bicubic, centre-crop S x S, scale to [0, 1],
  normalise by mean/std) and caption normalisation (lower case, curly double
  quotes to ASCII) that produce the inputs, plus the model's spec;
- ``preprocessor_config.json``: the same preprocessing as a transformers
  ``CLIPImageProcessor``; the tokenizer files (``vocab.txt``, ``tokenizer.json``).

Features are L2-normalised inside the graphs. cn_clip's ONNX export fixes the batch
at 1; here every axis a caller varies is dynamic, and the export is checked against
torch on onnxruntime before it is kept.
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from zhclip.training.convert import CannotConvert
from zhclip.training.export import atomic_write_dir, write_tokenizer_files
from zhclip.training.model import ChineseCLIP, load_weights, model_from_spec

log = logging.getLogger(__name__)

FORMAT = "zhclip-onnx"
VERSION = 1
META_FILE = "zhclip_onnx.json"
IMAGE_INPUT, IMAGE_OUTPUT = "pixels", "image_features"
TEXT_INPUTS, TEXT_OUTPUT = ("input_ids", "attention_mask"), "text_features"
DEFAULT_OPSET = 18
MIN_OPSET = 18  # the lowest opset torch's exporter writes natively (no down-conversion)
CHECK_TOL = 1e-4  # fp32 graphs must match torch this closely, or the export is refused


class ImageEncoder(nn.Module):
    """pixels -> normalised image features, optionally computing in float16."""

    def __init__(self, model: ChineseCLIP, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels.to(self.dtype)).float()


class TextEncoder(nn.Module):
    """(input_ids, attention_mask) -> normalised text features."""

    def __init__(self, model: ChineseCLIP):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(input_ids, attention_mask).float()


def file_names(fp16: bool) -> dict[str, str]:
    """precision/tower -> file name."""
    names = {"fp32/image": "image.onnx", "fp32/text": "text.onnx"}
    if fp16:
        names.update({"fp16/image": "image.fp16.onnx", "fp16/text": "text.fp16.onnx"})
    return names


def check_opset(opset: int) -> None:
    """Refuse an opset torch cannot write or the installed onnxruntime cannot run."""
    from zhclip.training.onnx_model import runtime_max_opset

    if opset < MIN_OPSET:
        raise CannotConvert(
            f"cannot export to onnx at opset {opset}: torch's exporter writes "
            f"opset {MIN_OPSET} or later"
        )
    top = runtime_max_opset()
    if top is not None and opset > top:
        import onnxruntime

        raise CannotConvert(
            f"cannot export to onnx at opset {opset}: onnxruntime "
            f"{onnxruntime.__version__} runs opset {top} at most"
        )


def _export(
    module: nn.Module,
    args: tuple,
    path: Path,
    names: tuple[str, ...],
    output: str,
    dynamic: dict[str, dict[int, Any]],
    opset: int,
) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on axis names it merged
            program = torch.onnx.export(
                module.eval(),
                args,
                dynamo=True,
                input_names=list(names),
                output_names=[output],
                dynamic_shapes=dynamic,
                opset_version=opset,
                verbose=False,
            )
        program.save(str(path))
    except Exception as err:  # the exporter raises many types; all mean "cannot trace this"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CannotConvert(
            f"cannot export to onnx: torch's exporter failed on {path.name} ({first})"
        ) from err


def write_onnx(
    data: Mapping[str, Any], out_dir: str | Path, fp16: bool = False, opset: int = DEFAULT_OPSET
) -> Path:
    """Write the folder (atomically) after checking the fp32 graphs against torch."""
    check_opset(opset)
    spec, vocab = data["spec"], list(data["vocab"])
    context_length = int(data.get("context_length", spec["context_length"]))
    model = model_from_spec(spec)
    load_weights(model, data["state_dict"])
    model.eval()
    size = int(spec["image_size"])
    pixels = torch.zeros(2, 3, size, size)
    ids = torch.zeros(2, context_length, dtype=torch.long)
    mask = torch.ones(2, context_length, dtype=torch.long)
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length")
    image_axes = {IMAGE_INPUT: {0: batch}}
    text_axes = {name: {0: batch, 1: length} for name in TEXT_INPUTS}
    names = file_names(fp16)
    final = Path(out_dir).resolve()
    with atomic_write_dir(final) as tmp:
        _export(
            ImageEncoder(model),
            (pixels,),
            tmp / names["fp32/image"],
            (IMAGE_INPUT,),
            IMAGE_OUTPUT,
            image_axes,
            opset,
        )
        _export(
            TextEncoder(model),
            (ids, mask),
            tmp / names["fp32/text"],
            TEXT_INPUTS,
            TEXT_OUTPUT,
            text_axes,
            opset,
        )
        if fp16:
            half = copy.deepcopy(model).half()
            _export(
                ImageEncoder(half, torch.float16),
                (pixels,),
                tmp / names["fp16/image"],
                (IMAGE_INPUT,),
                IMAGE_OUTPUT,
                image_axes,
                opset,
            )
            _export(
                TextEncoder(half),
                (ids, mask),
                tmp / names["fp16/text"],
                TEXT_INPUTS,
                TEXT_OUTPUT,
                text_axes,
                opset,
            )
        write_tokenizer_files(vocab, context_length, tmp)
        _write_image_processor(spec, tmp)
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "opset": opset,
            "files": names,
            "inputs": {"image": [IMAGE_INPUT], "text": list(TEXT_INPUTS)},
            "outputs": {"image": IMAGE_OUTPUT, "text": TEXT_OUTPUT},
            "features": "L2-normalised",
            "embed_dim": int(spec["embed_dim"]),
            "context_length": context_length,
            "preprocess": {
                "size": size,
                "resize": "shortest side, bicubic",
                "crop": "center",
                "scale": "1/255",
                "mean": list(spec["mean"]),
                "std": list(spec["std"]),
            },
            "caption_normalisation": "lower case; curly double quotes to ASCII (as Chinese-CLIP)",
            "spec": spec,
        }
        (tmp / META_FILE).write_text(
            json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        _check_against_torch(tmp, model)
    return final


def _write_image_processor(spec: Mapping[str, Any], folder: Path) -> None:
    from PIL import Image
    from transformers import CLIPImageProcessor

    size = int(spec["image_size"])
    CLIPImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        resample=Image.BICUBIC,
        image_mean=list(spec["mean"]),
        image_std=list(spec["std"]),
        do_convert_rgb=True,
    ).save_pretrained(folder)


@torch.no_grad()
def _check_against_torch(folder: Path, model: ChineseCLIP) -> None:
    """Refuse an export whose fp32 graphs compute other features than the model."""
    from zhclip.training.onnx_model import OnnxCLIP

    onnx_model = OnnxCLIP.load(folder)
    size = int(model.spec["image_size"])
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(3, 3, size, size, generator=generator)
    ids = torch.randint(
        0, int(model.spec["text"]["bert_config"]["vocab_size"]), (3, 7), generator=generator
    )
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    for ours, theirs, what in (
        (model.encode_image(pixels), onnx_model.encode_image(pixels), "image"),
        (model.encode_text(ids, mask), onnx_model.encode_text(ids, mask), "text"),
    ):
        gap = float((ours - theirs).abs().max())
        log.info("%s.onnx on onnxruntime vs torch: max feature difference %.2e", what, gap)
        if not gap < CHECK_TOL:
            raise CannotConvert(
                f"cannot export to onnx: the {what} graph's features differ from "
                f"torch's by {gap:.2e} on onnxruntime"
            )
