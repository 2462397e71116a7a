"""An ONNX export folder (training.export_onnx) run on onnxruntime, shaped like a zhclip model.

:class:`OnnxCLIP` has ``encode_image``, ``encode_text`` and ``spec``, so the
evaluation helpers (``training.evaluate``), zero-shot classification and
``zhclip eval --model DIR`` run the deployable artefact through the very code that
evaluates the torch model. :func:`load_onnx_export` mirrors ``export.load_export``:
(model, tokenizer, image transform), all read from the folder.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

# Probed from here down; far above any released opset, so a newer runtime is not capped.
PROBE_FROM = 40
PROBE_IR_VERSION = 8  # old enough for any onnxruntime that runs opset 18


class OnnxExportError(ValueError):
    """An ONNX folder this runtime cannot run (missing files, an opset it lacks)."""


def is_onnx_folder(path: str | Path) -> bool:
    from zhclip.training.export_onnx import META_FILE

    return (Path(path) / META_FILE).is_file()


@functools.lru_cache(maxsize=1)
def runtime_max_opset() -> int | None:
    """The newest default-domain opset the installed onnxruntime loads (None: no onnxruntime).

    onnxruntime does not publish it; a one-node model stamped with each opset in
    turn finds it in a few milliseconds.
    """
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return None

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    options = ort.SessionOptions()
    options.log_severity_level = 4  # the probe's failures are expected
    for opset in range(PROBE_FROM, 0, -1):
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=PROBE_IR_VERSION
        )
        try:
            ort.InferenceSession(
                model.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
        except Exception:  # noqa: BLE001 - any refusal means "not this opset"
            continue
        return opset
    return None


def _model_opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _providers(device: str | torch.device) -> list[str]:
    import onnxruntime as ort

    if (
        torch.device(device).type == "cuda"
        and "CUDAExecutionProvider" in ort.get_available_providers()
    ):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _session(path: Path, device: str | torch.device, precision: str = "fp32"):
    import onnxruntime as ort

    if not path.is_file():
        raise OnnxExportError(f"{path.parent}: no {path.name} (re-run zhclip export --format onnx)")
    opset, top = _model_opset(path), runtime_max_opset()
    if top is not None and opset > top:
        raise OnnxExportError(
            f"{path} needs ONNX opset {opset}; onnxruntime {ort.__version__} runs "
            f"opset {top} at most (re-export with --opset {top}, or upgrade "
            "onnxruntime)"
        )
    try:
        options = ort.SessionOptions()
        providers = _providers(device)
        if precision == "fp16" and providers[0] == "CPUExecutionProvider":
            # onnxruntime 1.32's CPU layout rewrites (ORT_ENABLE_ALL) crash the process on a
            # float16 ViT graph; every other optimisation level runs it
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as err:  # onnxruntime's own Fail/InvalidGraph/...: say it in one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise OnnxExportError(
            f"{path}: onnxruntime {ort.__version__} cannot load it ({first})"
        ) from None


class OnnxCLIP:
    """The two ONNX encoders; inputs and outputs are torch tensors (on the CPU)."""

    training = False  # evaluation code toggles eval mode; an ONNX graph has only one

    def __init__(self, meta: dict[str, Any], image_session, text_session):
        self.meta = meta
        self.spec = meta["spec"]
        self._image, self._text = image_session, text_session

    @classmethod
    def load(
        cls, folder: str | Path, precision: str = "fp32", device: str | torch.device = "cpu"
    ) -> OnnxCLIP:
        from zhclip.training.export_onnx import FORMAT, META_FILE

        root = Path(folder)
        try:
            meta = json.loads((root / META_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise OnnxExportError(f"{root}: unreadable {META_FILE} ({err})") from None
        if meta.get("format") != FORMAT:
            raise OnnxExportError(f"{root / META_FILE} is not a zhclip ONNX export")
        files = meta["files"]
        if f"{precision}/image" not in files:
            raise OnnxExportError(
                f"{root}: no {precision} graphs (exported with: "
                f"{sorted({k.split('/')[0] for k in files})})"
            )
        return cls(
            meta,
            _session(root / files[f"{precision}/image"], device, precision),
            _session(root / files[f"{precision}/text"], device, precision),
        )

    def eval(self) -> OnnxCLIP:
        return self

    def train(self, mode: bool = True) -> OnnxCLIP:
        return self

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        name = self.meta["inputs"]["image"][0]
        out = self._image.run(None, {name: pixels.detach().float().cpu().numpy()})[0]
        return torch.from_numpy(out)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        ids_name, mask_name = self.meta["inputs"]["text"]
        out = self._text.run(
            None,
            {
                ids_name: input_ids.detach().long().cpu().numpy(),
                mask_name: attention_mask.detach().long().cpu().numpy(),
            },
        )[0]
        return torch.from_numpy(out)


def load_onnx_export(
    folder: str | Path, device: str | torch.device = "cpu", precision: str = "fp32"
):
    """(OnnxCLIP, tokenizer, eval image transform), like ``export.load_export``."""
    from zhclip.training.data import eval_transform
    from zhclip.training.tokenizer import load_tokenizer

    model = OnnxCLIP.load(folder, precision, device)
    tokenizer = load_tokenizer(str(folder), int(model.meta["context_length"]))
    pre = model.meta["preprocess"]
    transform: Callable[[Image.Image], torch.Tensor] = eval_transform(
        int(pre["size"]), pre["mean"], pre["std"]
    )
    return model, tokenizer, transform
