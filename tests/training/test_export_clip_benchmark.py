"""CLIP_benchmark's own CLI (`clip_benchmark eval`) on a zhclip open_clip export: on a
Chinese retrieval set written by `zhclip eval --write-wds`, its recalls equal `zhclip eval`'s
(no ties); on zero-shot classification with its `cn` ImageNet class names and templates,
read from the installed package, its accuracy and classifier equal zhclip's."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import clip_benchmark
import numpy as np
import pytest
import torch
from zhclip.pipeline.cli import main as zhclip
from zhclip.training.export_fixtures import write_benchmark, write_export
from zhclip.training.export_open_clip import cleaning_changes

torch.set_num_threads(1)
CB_DATA = Path(clip_benchmark.__file__).parent / "datasets"
# CLIP_benchmark 1.6.2 calls float() on a 1-element array in zero-shot accuracy(), which numpy 2
# refuses (LAION-AI/CLIP_benchmark#147, open); the run fails after it saved the classifier
NUMPY2_ACCURACY_BUG = "only 0-dimensional arrays can be converted to Python scalars"
CB_CLASSNAMES, CB_TEMPLATES = "cn_classnames.json", "cn_zeroshot_classification_templates.json"


def _clip_benchmark(root: Path, *args: str, known_failure: str = "") -> dict | None:
    """Run CLIP_benchmark's console script as its users do; return its metrics."""
    out = root / "cb.json"
    cli = Path(sys.executable).parent / "clip_benchmark"
    done = subprocess.run(
        [
            str(cli),
            "eval",
            "--model",
            f"local-dir:{root / 'oc'}",
            "--pretrained",
            "none",
            "--no_amp",
            "--num_workers",
            "0",
            "--output",
            str(out),
            *args,
        ],
        capture_output=True,
        text=True,
    )
    if known_failure and done.returncode and known_failure in done.stderr:
        return None
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())["metrics"]


def _zhclip_eval(root: Path, export: Path, data: Path, *args: str) -> dict:
    """`zhclip eval` with features saved under root/f; returns its metrics."""
    out = root / "zh.json"
    assert (
        zhclip(
            [
                "eval",
                "--model",
                str(export),
                "--data",
                str(data),
                "--out",
                str(out),
                "--save-features",
                str(root / "f"),
                *args,
            ]
        )
        == 0
    )
    return json.loads(out.read_text())


def _open_clip_export(root: Path, **kw) -> Path:
    export = write_export(root, "vit", **kw)
    assert (
        zhclip(["export", str(export), "--format", "open_clip", "--output", str(root / "oc")]) == 0
    )
    return export


def _tie_free(queries: np.ndarray, candidates: np.ndarray, positives: list[set[int]]) -> bool:
    """No wrong candidate scores within 5e-6 of a query's best correct one: only then do a
    "ties count against" rank (zhclip, tolerance 1e-6) and a top-k pick (CLIP_benchmark)
    agree. The tiny model's text features are close together, so the set's seed is one
    whose smallest gap (7e-6) clears this."""
    sims = queries @ candidates.T
    for row, good in zip(sims, positives, strict=True):
        best = max(row[j] for j in good)
        if any(abs(row[j] - best) < 5e-6 for j in range(len(row)) if j not in good):
            return False
    return True


def test_clip_benchmark_cli_gives_zhclip_recall_on_a_tie_free_set(tmp_path):
    export = _open_clip_export(tmp_path)
    bench = write_benchmark(tmp_path / "bench", n_images=12, captions_per_image=2, seed=5)
    ours = _zhclip_eval(
        tmp_path, export, bench, "--split", "test", "--write-wds", str(tmp_path / "wds")
    )
    img = np.load(tmp_path / "f" / "image_features.npy")
    txt = np.load(tmp_path / "f" / "text_features.npy")
    per_image = 2  # write_benchmark lists each image's captions together
    assert _tie_free(txt, img, [{t // per_image} for t in range(len(txt))])
    assert _tie_free(
        img, txt, [{per_image * i + j for j in range(per_image)} for i in range(len(img))]
    )
    assert (tmp_path / "wds" / "test" / "nshards.txt").read_text().strip() == "1"
    theirs = _clip_benchmark(
        tmp_path,
        "--dataset",
        "wds/zh_shapes",
        "--dataset_root",
        str(tmp_path / "wds"),
        "--task",
        "zeroshot_retrieval",
        "--recall_k",
        "1",
        "5",
        "10",
        "--batch_size",
        "5",
    )
    for k in (1, 5, 10):
        assert 100 * theirs[f"image_retrieval_recall@{k}"] == pytest.approx(
            ours[f"t2i_r{k}"], abs=1e-4
        )
        assert 100 * theirs[f"text_retrieval_recall@{k}"] == pytest.approx(
            ours[f"i2t_r{k}"], abs=1e-4
        )
    assert 0 < ours["t2i_r5"] < 100  # a result that could have differed


@pytest.mark.slow
def test_clip_benchmark_zero_shot_with_its_cn_classnames_and_templates(tmp_path):
    """1000 classes x 80 templates through both tools: about a minute on a busy CPU."""
    import random

    from zhclip.training.benchmarks import read_image_folder
    from zhclip.training.clip_benchmark_layout import write_classification
    from zhclip.training.fixtures import draw_sample, png_bytes
    from zhclip.training.zeroshot import classification_metrics

    classnames = json.loads((CB_DATA / CB_CLASSNAMES).read_text(encoding="utf-8"))["imagenet1k"]
    templates = json.loads((CB_DATA / CB_TEMPLATES).read_text(encoding="utf-8"))["imagenet1k"]
    # open_clip's tokenizer folds full-width punctuation in some of these names (the ftfy
    # trap); zhclip is given the folded spelling, so both tools embed the same strings
    from open_clip.tokenizer import get_clean_fn

    folded = [get_clean_fn("whitespace")(c) for c in classnames]
    changed = sum(a != b for a, b in zip(classnames, folded, strict=True))
    assert changed == sum(cleaning_changes(classnames)) > 0
    zh_templates = [t.replace("{c}", "{}") for t in templates]
    # context 32: no two prompts collide after truncation
    export = _open_clip_export(tmp_path, vocab_extra=folded + templates, context_length=32)
    rng = random.Random(0)
    folder = tmp_path / "zs"
    for c in range(len(classnames)):
        (folder / f"c{c:04d}").mkdir(parents=True)
    for i in range(8):
        image = draw_sample("左上", "红色", "圆形", 40, rng)
        (folder / f"c{i:04d}" / f"{i}.png").write_bytes(png_bytes(image))
    (tmp_path / "names.txt").write_text("\n".join(folded) + "\n", encoding="utf-8")
    (tmp_path / "templates.txt").write_text("\n".join(zh_templates) + "\n", encoding="utf-8")
    _zhclip_eval(
        tmp_path,
        export,
        folder,
        "--task",
        "zeroshot",
        "--classnames",
        str(tmp_path / "names.txt"),
        "--templates",
        str(tmp_path / "templates.txt"),
    )
    image_features = torch.from_numpy(np.load(tmp_path / "f" / "image_features.npy"))
    classes = torch.from_numpy(np.load(tmp_path / "f" / "class_features.npy"))
    # relabel so the scores are not trivially 0: half the images belong to their nearest
    # class (hits), half to their 10th (top-5 misses); the same labels go to both tools
    order = (image_features @ classes.T).argsort(dim=1, descending=True)
    data = read_image_folder(folder, tmp_path / "names.txt")
    data.labels = [int(order[i, 0 if i % 2 == 0 else 9]) for i in range(len(data.labels))]
    ours = classification_metrics(image_features, classes, data.labels)
    assert ours["top1"] == 50.0 and ours["top5"] == 50.0
    write_classification(data, zh_templates, tmp_path / "wds")
    # the package's own files, named as CLIP_benchmark resolves them (inside its datasets/)
    theirs = _clip_benchmark(
        tmp_path,
        "--dataset",
        "wds/imagenet1k",
        "--dataset_root",
        str(tmp_path / "wds"),
        "--task",
        "zeroshot_classification",
        "--language",
        "cn",
        "--custom_classname_file",
        CB_CLASSNAMES,
        "--custom_template_file",
        CB_TEMPLATES,
        "--batch_size",
        "4",
        "--save_clf",
        str(tmp_path / "clf.pt"),
        known_failure=NUMPY2_ACCURACY_BUG,
    )
    # the classifier is saved before the accuracy step, so it is compared either way
    clf = torch.load(tmp_path / "clf.pt").numpy()  # [D, C]
    assert np.abs(clf.T - classes.numpy()).max() < 1e-4
    if theirs is None:
        pytest.xfail(
            f"clip_benchmark {version('clip-benchmark')}'s accuracy() fails under "
            f"numpy {np.__version__} (LAION-AI/CLIP_benchmark#147); its classifier "
            "equals zhclip's"
        )
    assert 100 * theirs["acc1"] == pytest.approx(ours["top1"])
    assert 100 * theirs["acc5"] == pytest.approx(ours["top5"])


def test_the_layout_keeps_clip_benchmarks_meaning_and_counts_what_changed(tmp_path):
    """A caption on two images goes under both; an image without one gets an empty list."""
    import io
    import tarfile

    from PIL import Image
    from zhclip.training.benchmarks import read_image_folder, read_retrieval
    from zhclip.training.clip_benchmark_layout import write_classification, write_retrieval
    from zhclip.training.fixtures import png_bytes, write_chinese_clip_benchmark

    images = [(7 + i, png_bytes(Image.new("RGB", (8, 8), (i * 60, 0, 0)))) for i in range(3)]
    texts = [(0, "红色的圆形", [7]), (1, "两张图\n都有", [7, 8]), (2, "绿色方形", [8])]
    bench = read_retrieval(
        write_chinese_clip_benchmark(tmp_path / "b", "test", images, texts), "auto", "test"
    )
    counts = write_retrieval(bench, tmp_path / "wds", per_shard=2)
    assert counts == {
        "images": 3,
        "captions": 4,
        "images_without_caption": 1,
        "captions_on_several_images": 1,
    }
    assert (tmp_path / "wds" / "test" / "nshards.txt").read_text() == "2\n"
    assert (tmp_path / "wds" / "dataset_type.txt").read_text() == "retrieval\n"
    members = {}
    for shard in ("0", "1"):
        with tarfile.open(tmp_path / "wds" / "test" / f"{shard}.tar") as tar:
            members.update({m.name: tar.extractfile(m).read() for m in tar.getmembers()})
    assert members["00000000.txt"].decode().splitlines() == ["红色的圆形", "两张图 都有"]
    assert members["00000001.txt"].decode().splitlines() == ["两张图 都有", "绿色方形"]
    assert members["00000002.txt"] == b""
    assert Image.open(io.BytesIO(members["00000001.png"])).getpixel((0, 0)) == (
        60,
        0,
        0,
    )

    for c, name in enumerate(("a", "b")):
        (tmp_path / "zs" / name).mkdir(parents=True)
        (tmp_path / "zs" / name / "x.png").write_bytes(images[c][1])
    (tmp_path / "names.txt").write_text("猫\n狗\n", encoding="utf-8")
    data = read_image_folder(tmp_path / "zs", tmp_path / "names.txt")
    assert write_classification(data, ["{}的照片", "一张{}"], tmp_path / "zw") == {
        "images": 2,
        "classes": 2,
        "templates": 2,
    }
    assert (tmp_path / "zw" / "classnames.txt").read_text(encoding="utf-8") == "猫\n狗\n"
    assert (tmp_path / "zw" / "zeroshot_classification_templates.txt").read_text(
        encoding="utf-8"
    ) == "{c}的照片\n一张{c}\n"
    with tarfile.open(tmp_path / "zw" / "test" / "0.tar") as tar:
        assert tar.extractfile("00000001.cls").read() == b"1"
