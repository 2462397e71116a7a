"""`zhclip export --format onnx`: onnxruntime at batch 1 and 33 (and two text lengths)
gives torch's features within 1e-4; `zhclip eval` on the ONNX folder equals `zhclip eval`
on the export; an opset the runtime lacks is one clear line, at export and at load."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from zhclip.pipeline.cli import main as zhclip
from zhclip.training.export import load_export
from zhclip.training.export_fixtures import write_benchmark, write_export
from zhclip.training.export_onnx import META_FILE
from zhclip.training.onnx_model import OnnxCLIP, load_onnx_export, runtime_max_opset

torch.set_num_threads(1)
TOL = 1e-4
FP16_TOL = 1e-2


def _export_onnx(export, out, *flags: str) -> int:
    return zhclip(["export", str(export), "--format", "onnx", "--output", str(out), *flags])


# the ResNet pairing runs with the slow tests (its export adds ~20 s here)
@pytest.fixture(scope="module", params=["vit", pytest.param("rn", marks=pytest.mark.slow)])
def exported(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"onnx-{request.param}")
    export = write_export(root, request.param)
    flags = ["--fp16"] if request.param == "vit" else []
    assert _export_onnx(export, root / "onnx", *flags) == 0
    return {
        "root": root,
        "export": export,
        "onnx": root / "onnx",
        "kind": request.param,
        "zh": load_export(export),
    }


def _dims(path, name: str) -> list:
    graph = onnx.load(str(path)).graph
    value = next(v for v in graph.input if v.name == name)
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


@torch.no_grad()
def test_onnxruntime_gives_torch_features_at_batch_1_and_33(exported):
    model, tokenizer, _ = exported["zh"]
    folder = exported["onnx"]
    image = ort.InferenceSession(str(folder / "image.onnx"), providers=["CPUExecutionProvider"])
    text = ort.InferenceSession(str(folder / "text.onnx"), providers=["CPUExecutionProvider"])
    # the axes are symbolic in the files themselves, not just accepted by this runtime
    assert isinstance(_dims(folder / "image.onnx", "pixels")[0], str)
    ids_dims = _dims(folder / "text.onnx", "input_ids")
    assert all(isinstance(d, str) for d in ids_dims)
    generator = torch.Generator().manual_seed(0)
    captions = ["左上的红色圆形", "蓝色方形在右下", "左下有一个黄色三角形，很大！"]
    for n in (1, 33):
        pixels = torch.randn(n, 3, 32, 32, generator=generator)
        got = image.run(None, {"pixels": pixels.numpy()})[0]
        assert got.shape == (n, 32)
        assert np.abs(got - model.encode_image(pixels).numpy()).max() < TOL
        ids, mask = tokenizer((captions * 11)[:n])
        for length in (16, 7):  # the padded length, and a shorter one (dynamic axis)
            i, m = ids[:, :length], mask[:, :length]
            got = text.run(None, {"input_ids": i.numpy(), "attention_mask": m.numpy()})[0]
            assert np.abs(got - model.encode_text(i, m).numpy()).max() < TOL


@torch.no_grad()
def test_fp16_graphs_run_and_stay_close(exported):
    if exported["kind"] != "vit":
        pytest.skip("fp16 graphs are written for the ViT export only, to keep the test short")
    model, tokenizer, _ = exported["zh"]
    half = OnnxCLIP.load(exported["onnx"], "fp16")
    pixels = torch.randn(5, 3, 32, 32)
    assert float((half.encode_image(pixels) - model.encode_image(pixels)).abs().max()) < FP16_TOL
    ids, mask = tokenizer(["左上的红色圆形", "蓝色方形在右下"])
    assert (
        float((half.encode_text(ids, mask) - model.encode_text(ids, mask)).abs().max()) < FP16_TOL
    )
    assert (
        "image.fp16.onnx"
        in json.loads((exported["onnx"] / META_FILE).read_text())["files"].values()
    )


def test_folder_carries_preprocessing_and_tokenizer(exported):
    from PIL import Image
    from transformers import AutoTokenizer, CLIPImageProcessor

    model, tokenizer, transform = exported["zh"]
    _, onnx_tokenizer, onnx_transform = load_onnx_export(exported["onnx"])
    folder = exported["onnx"]
    captions = ["左上的红色圆形", "“左下”的黄色三角形"]
    assert torch.equal(onnx_tokenizer(captions)[0], tokenizer(captions)[0])
    plain = AutoTokenizer.from_pretrained(str(folder))(
        captions[:1], padding="max_length", max_length=16, return_tensors="pt"
    )
    assert torch.equal(plain["input_ids"], tokenizer(captions[:1])[0])
    image = Image.fromarray((np.random.default_rng(0).random((45, 60, 3)) * 255).astype(np.uint8))
    assert torch.equal(onnx_transform(image), transform(image))
    processed = CLIPImageProcessor.from_pretrained(str(folder))(image, return_tensors="pt")
    assert float((processed["pixel_values"][0] - transform(image)).abs().max()) < 0.02


def test_zhclip_eval_on_the_onnx_folder_equals_eval_on_the_export(exported, tmp_path):
    bench = write_benchmark(tmp_path / "bench")
    runs = {}
    for name, model in (("torch", exported["export"]), ("onnx", exported["onnx"])):
        out = tmp_path / f"{name}.json"
        assert (
            zhclip(
                [
                    "eval",
                    "--model",
                    str(model),
                    "--data",
                    str(bench),
                    "--split",
                    "test",
                    "--out",
                    str(out),
                    "--save-features",
                    str(tmp_path / name),
                    "--batch-size",
                    "5",
                ]
            )
            == 0
        )
        runs[name] = json.loads(out.read_text())
    keys = [k for k in runs["torch"] if k.endswith(("_r1", "_r5", "_r10")) or k == "mean_recall"]
    assert len(keys) == 7
    assert {k: runs["onnx"][k] for k in keys} == {k: runs["torch"][k] for k in keys}
    for kind in ("image", "text"):
        a = np.load(tmp_path / "torch" / f"{kind}_features.npy")
        b = np.load(tmp_path / "onnx" / f"{kind}_features.npy")
        assert np.abs(a - b).max() < TOL


def test_an_opset_the_runtime_lacks_is_one_line(exported, tmp_path, capsys):
    top = runtime_max_opset()
    assert top is not None and top >= 18
    assert _export_onnx(exported["export"], tmp_path / "o", "--opset", str(top + 1)) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"opset {top + 1}" in err and f"runs opset {top} at most" in err
    assert not (tmp_path / "o").exists()
    assert _export_onnx(exported["export"], tmp_path / "o", "--opset", "11") == 2
    assert "opset 18 or later" in capsys.readouterr().err
    # a folder whose graph is stamped with a newer opset than this runtime runs
    stamped = onnx.load(str(exported["onnx"] / "image.onnx"))
    for entry in stamped.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = top + 1
    folder = tmp_path / "stamped"
    folder.mkdir()
    for f in exported["onnx"].iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    onnx.save(stamped, str(folder / "image.onnx"))
    bench = write_benchmark(tmp_path / "bench", n_images=3, captions_per_image=1)
    assert (
        zhclip(
            [
                "eval",
                "--model",
                str(folder),
                "--data",
                str(bench),
                "--split",
                "test",
                "--out",
                str(tmp_path / "m.json"),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"needs ONNX opset {top + 1}" in err and "--opset" in err
