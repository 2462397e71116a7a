"""Checkpoints by step: atomic writes, ``--resume latest``, full training state.

A checkpoint holds everything needed to continue as if never stopped: model,
optimizer, scheduler and grad-scaler state, stage and step, every rank's data
position and RNG states, the model spec and tokenizer vocabulary (so it can
also be loaded as an export), and the training config. It is written to a
temporary name and renamed, so a crash mid-write never leaves a file that
``latest`` would pick.

Every file is read with ``torch.load(weights_only=True)``: a checkpoint is
only tensors and plain containers of numbers and strings (the numpy RNG state
is stored as a tensor), so a file dropped into checkpoints/ that carries any
other pickled object is refused instead of run.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "zhclip-checkpoint"


class UnsafeCheckpoint(ValueError):
    """The file holds pickled objects other than tensors and plain values: never unpickled."""


class DamagedCheckpoint(ValueError):
    """The file is empty, truncated or not a torch file at all."""


def safe_load(path: Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> Any:
    """``torch.load`` with ``weights_only=True``, its failures sorted into refused and damaged.

    ``mmap=True`` maps tensors lazily: a cheap check that a file is whole
    (a truncated zip has no central directory) without reading the weights.
    """
    if path.stat().st_size == 0:
        raise DamagedCheckpoint(f"{path}: empty file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            raise UnsafeCheckpoint(
                f"{path}: refused: it holds pickled Python objects other than tensors and plain "
                "values, and loading it could run code; only load files you made"
            ) from None
        raise DamagedCheckpoint(f"{path}: damaged ({err})") from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise DamagedCheckpoint(f"{path}: damaged or truncated ({type(err).__name__}: {err})") from None
NAME_RE = re.compile(r"^step-(\d{8,})\.pt$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}.pt"


def atomic_save(obj: Any, path: Path) -> Path:
    """torch.save to ``path`` through a temporary file in the same folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of the complete checkpoints in ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = NAME_RE.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def save_checkpoint(folder: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write ``state`` as step ``step`` and keep only the newest ``keep`` files."""
    state = {"format": CHECKPOINT_FORMAT, "step": step, **state}
    path = atomic_save(state, folder / checkpoint_name(step))
    for _, old in list_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def resolve_resume(resume: str | None, folder: Path) -> Path | None:
    """``latest`` -> newest checkpoint in ``folder`` (None if there is none); else a path."""
    if not resume:
        return None
    if resume == "latest":
        return newest_good_checkpoint(folder)
    path = Path(resume)
    if not path.is_file():
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint file")
    return path


def newest_good_checkpoint(folder: Path) -> Path | None:
    """Newest checkpoint that opens; damaged newer ones are skipped with a warning.

    A disk that filled up, or a copy cut short, leaves an empty or truncated
    newest file; resuming from the one before loses a few steps, not the run.
    An unsafe file is not skipped: it is an attack or a mistake to look at.
    """
    for step, path in reversed(list_checkpoints(folder)):
        try:
            safe_load(path, mmap=True)
        except DamagedCheckpoint as err:
            log.warning("--resume latest: skipping step %d: %s", step, err)
            continue
        return path
    return None


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    state = safe_load(path, map_location)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a zhclip training checkpoint")
    return state


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": _numpy_state_as_tensors(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(_numpy_state_from_tensors(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _numpy_state_as_tensors(state: tuple) -> dict[str, Any]:
    """numpy's legacy RNG state with its key array as a tensor (weights_only can load it)."""
    kind, keys, pos, has_gauss, cached = state
    return {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _numpy_state_from_tensors(state: dict[str, Any]) -> tuple:
    keys = state["keys"].numpy().astype(np.uint32)
    return state["kind"], keys, state["pos"], state["has_gauss"], state["cached_gaussian"]
