"""Stage 3's optional image-safety rule: NudeNet's detector on the images that are kept.

``score.safety.enabled`` turns it on (the paper did not filter images this way;
LAION's ``punsafe`` column stays a stage-1 rule for LAION only). It runs last
in a batch, on the images every cheaper rule (decode, blank, overlap, score
threshold) let through, in batches of ``score.safety.batch_size``. An image is
rejected as ``unsafe_image`` when any configured class is detected at the
threshold or above; the classes found go to the reject's ``matched`` column
(the decision itself is :func:`zhclip.filters.image_rules.safety_reason`).

The detector is the ONNX model inside the ``nudenet`` wheel, run with
onnxruntime directly so that a whole batch is one call and the pixels come
from the JPEG stage 3 stores. Preprocessing is NudeNet's own arithmetic (pad
right and bottom to a square, bilinear resize to 320, [0, 1], its channel
order); the tests compare the inputs and scores with ``nudenet.NudeDetector``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from zhclip.filters import image_rules
from zhclip.filters import images as I
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.core.errors import ConfigError

INPUT_SIDE = 320
MODEL_FILE = "320n.onnx"
INSTALL = "pip install 'zhclip[safety]'"


def _nudenet() -> Any:
    """The nudenet package, or one line saying which extra installs it."""
    try:
        import nudenet
        import nudenet.nudenet as detector_module
    except ImportError as err:
        raise ConfigError(
            f"score.safety.enabled needs NudeNet's detector, which this install lacks "
            f"({err}); install it with: {INSTALL}"
        ) from None
    return nudenet, detector_module


def labels() -> list[str]:
    """NudeNet's class names, in the order of the model's outputs."""
    _, module = _nudenet()
    return list(getattr(module, "__labels"))


def preprocess(image: Any, side: int = INPUT_SIDE) -> np.ndarray:
    """A PIL image as the detector's input: padded right/bottom to a square with
    black, bilinear-resized to ``side``, float32 CHW in [0, 1], as NudeNet makes it."""
    import cv2

    arr = np.asarray(image.convert("RGB"), dtype=np.uint8)
    h, w = arr.shape[:2]
    size = max(h, w)
    padded = np.zeros((size, size, 3), dtype=np.uint8)
    padded[:h, :w] = arr
    resized = cv2.resize(padded, (side, side), interpolation=cv2.INTER_LINEAR)
    # NudeNet's detect() hands its model the channels as B, G, R (its cvtColor and
    # swapRB each swap once); thresholds in use were set through it, so the same here.
    bgr = resized[..., ::-1]
    return np.ascontiguousarray(bgr.astype(np.float32).transpose(2, 0, 1) / 255.0)


class SafetyModel:
    """NudeNet's ONNX detector; :meth:`class_scores` gives each image's best score per class."""

    def __init__(self, cfg: Any) -> None:
        nudenet, _ = _nudenet()
        import onnxruntime as ort

        self.labels = labels()
        unknown = sorted(set(cfg.classes) - set(self.labels))
        if unknown:
            raise ConfigError(
                f"score.safety.classes: unknown {unknown}; NudeNet's classes are {self.labels}"
            )
        path = os.path.join(os.path.dirname(nudenet.__file__), MODEL_FILE)
        try:
            self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        except Exception as err:  # a damaged wheel: said once, on the driver
            raise ConfigError(
                f"score.safety: NudeNet's model {path} does not load ({err}); "
                f"reinstall it with: {INSTALL}"
            ) from None
        self.input_name = self.session.get_inputs()[0].name
        self.classes = list(cfg.classes)
        self.threshold = float(cfg.threshold)
        self.batch_size = int(cfg.batch_size)

    def class_scores(self, images: Sequence[Any]) -> list[dict[str, float]]:
        """Best confidence per class for each PIL image (every anchor of the detector counted)."""
        out: list[dict[str, float]] = []
        for i in range(0, len(images), self.batch_size):
            batch = np.stack([preprocess(img) for img in images[i : i + self.batch_size]])
            raw = self.session.run(None, {self.input_name: batch})[0]  # (n, 4 + classes, anchors)
            best = raw[:, 4:, :].max(axis=2)
            out += [
                {name: float(v) for name, v in zip(self.labels, row, strict=True)} for row in best
            ]
        return out

    def judge(self, result: Any, start: int) -> None:
        """Reject ``result.kept[start:]`` records the rule finds unsafe (their image: JPEG bytes)."""
        from zhclip.pipeline.score.steps import IMAGE, STAGE

        candidates = result.kept[start:]
        if not candidates:
            return
        scores = self.class_scores([I.decode_image(r[IMAGE]) for r in candidates])
        kept = []
        for record, found in zip(candidates, scores, strict=True):
            reason, matched = image_rules.safety_reason(found, self.classes, self.threshold)
            if reason is None:
                kept.append(record)
                continue
            result.counts[record[S.SOURCE]][reason] += 1
            result.rejects.append(
                {
                    S.KEY: record[S.KEY],
                    S.SOURCE: record[S.SOURCE],
                    S.URL: record[S.URL],
                    S.CAPTION: record[S.CAPTION],
                    S.REASON: reason,
                    S.STAGE: STAGE,
                    S.MATCHED: matched,
                }
            )
        result.kept[start:] = kept


def load_safety_model(cfg: Any) -> SafetyModel | None:
    """The detector when ``score.safety.enabled``; None otherwise. Raises ConfigError in one line."""
    if cfg is None or not cfg.enabled:
        return None
    return SafetyModel(cfg)
