"""Exported models: weights + spec + vocabulary in one file, loadable offline.

The scorer's ``zhclip`` backend and anyone evaluating a trained model use
:func:`load_export`; it also accepts a training checkpoint, which carries the
same three parts. Features of a loaded model come from ``training.evaluate``'s
streaming helpers (``embed_image_stream``, ``embed_captions``), the one set.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from PIL import Image
from zhclip.training.checkpoint import CHECKPOINT_FORMAT, atomic_save, safe_load
from zhclip.training.data import eval_transform
from zhclip.training.model import ChineseCLIP, load_weights, model_from_spec
from zhclip.training.tokenizer import CaptionTokenizer, tokenizer_from_vocab

EXPORT_FORMAT = "zhclip-export"
EXPORT_VERSION = 1


def export_model(model: ChineseCLIP, tokenizer: CaptionTokenizer, path: str | Path) -> Path:
    """Write ``model`` (unwrapped, any device) and its tokenizer to ``path`` atomically."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return atomic_save({
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "spec": model.spec,
        "state_dict": state,
        "vocab": tokenizer.vocab(),
        "context_length": tokenizer.context_length,
    }, Path(path))


def read_weights_file(path: str | Path) -> dict:
    """An export or checkpoint as a dict with spec, state_dict (under "model" or "state_dict") and vocab."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no zhclip export or checkpoint at {path}")
    data = safe_load(p)  # weights_only: an init_from or export file never runs code
    fmt = data.get("format") if isinstance(data, dict) else None
    if fmt == CHECKPOINT_FORMAT:
        data = {**data, "state_dict": data["model"]}
    elif fmt != EXPORT_FORMAT:
        raise ValueError(f"{path} is neither a zhclip export nor a zhclip checkpoint")
    return data


def load_export(path: str | Path, device: str | torch.device = "cpu"
                ) -> tuple[ChineseCLIP, CaptionTokenizer, Callable[[Image.Image], torch.Tensor]]:
    """(model in eval mode on ``device``, tokenizer, eval image transform)."""
    data = read_weights_file(path)
    spec = data["spec"]
    model = model_from_spec(spec)
    load_weights(model, data["state_dict"])
    model.to(device).eval()
    tokenizer = tokenizer_from_vocab(data["vocab"], int(data.get("context_length",
                                                                  spec["context_length"])))
    transform = eval_transform(spec["image_size"], spec["mean"], spec["std"])
    return model, tokenizer, transform


@contextmanager
def atomic_write_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh folder beside ``final``; on success it replaces ``final`` whole.

    An export folder is read as a set (config, weights, tokenizer), so a reader
    must never see a half-written one, nor a mix of an old and a new export.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        final.replace(old)
    tmp.replace(final)
    shutil.rmtree(old, ignore_errors=True)


def write_tokenizer_files(vocab: list[str], context_length: int, folder: Path) -> None:
    """The BERT tokenizer files (vocab.txt, tokenizer.json, ...) any transformers
    ``AutoTokenizer`` loads; exported folders carry them beside the weights."""
    tokenizer = tokenizer_from_vocab(vocab, context_length).tokenizer
    tokenizer.model_max_length = context_length
    tokenizer.save_pretrained(folder)
