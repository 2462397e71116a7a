"""Stage 3's checks on the driver, before any worker starts: model paths, backend imports,
and the perceptual hashes of the evaluation images to decontaminate against.

Each fails in seconds with one line, instead of as a traceback from every worker's setup.
"""

from __future__ import annotations

import importlib.util
import logging
import os

from tqdm import tqdm
from zhclip.filters import images as I
from zhclip.pipeline.core.config import Config, ConfigError

log = logging.getLogger(__name__)

def eval_image_hashes(folder: str | None) -> list[int]:
    """Perceptual hashes of every image under ``folder`` (decontamination set)."""
    if not folder:
        return []
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"score.decontaminate: folder {folder!r} not found")
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs)
    hashes = []
    for f in tqdm(files, desc="hashing evaluation images", unit="img", disable=None):
        try:
            with open(f, "rb") as fh:
                hashes.append(I.phash64(I.decode_image(fh.read())))
        except (I.ImageDecodeError, OSError):
            log.warning("decontaminate: skipping %s (not an image)", f)
    if not hashes:
        raise FileNotFoundError(f"score.decontaminate: no readable images under {folder!r}")
    return hashes


# What each model backend imports in its workers' setup.
BACKEND_MODULES = {"mclip": ("torch", "transformers", "open_clip"), "zhclip": ("torch", "transformers")}


def check_model_paths(cfg: Config) -> None:
    """Fail on the driver, in a second, when a local model path named in the config is absent.

    Loading the model here would cost a second copy of it in memory; workers
    load it in DoFn.setup.
    """
    from zhclip.pipeline.score.backends import available_backends

    sc = cfg.score
    if sc.safety.enabled:  # loads the detector once here, so a missing extra is one line
        from zhclip.pipeline.score.safety import load_safety_model

        load_safety_model(sc.safety)
    if sc.backend not in available_backends():
        raise ConfigError(f"score.backend {sc.backend!r}: available {available_backends()}")
    if sc.backend == "precomputed":
        return
    for module in BACKEND_MODULES.get(sc.backend, ()):
        # Said here, in one line (the CLI names the pip extra), not as a traceback from every worker.
        if importlib.util.find_spec(module) is None:
            raise ModuleNotFoundError(f"No module named '{module}'", name=module)
    looks_local = sc.model.startswith((".", "/", "~")) or os.path.exists(sc.model)
    if looks_local and not os.path.exists(os.path.expanduser(sc.model)):
        raise FileNotFoundError(f"score.model: {sc.model} not found")
    if sc.backend == "mclip":
        if sc.image_model.startswith("local-dir:"):
            folder = sc.image_model[len("local-dir:"):]
            if not os.path.isdir(folder):
                raise FileNotFoundError(f"score.image_model: folder {folder} not found")
        pre = sc.image_pretrained
        if pre and pre.endswith((".pt", ".pth", ".bin", ".safetensors")) and not os.path.isfile(pre):
            raise FileNotFoundError(f"score.image_pretrained: {pre} not found")
