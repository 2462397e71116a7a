"""`zhclip export --format open_clip`: open_clip's own loader (local-dir:) and tokenizer
give zhclip's features within 1e-4 for a ViT and a ResNet pairing; the ftfy folding
of full-width punctuation is the one difference, and it is detected, not hidden."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
from PIL import Image
from zhclip.pipeline.cli import main as zhclip
from zhclip.training.convert import CannotConvert
from zhclip.training.evaluate import embed_captions, embed_image_stream
from zhclip.training.export import load_export, read_weights_file
from zhclip.training.export_fixtures import FOLDED, PUNCTUATED, write_export
from zhclip.training.export_open_clip import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    cleaning_changes,
    write_open_clip,
)
from zhclip.training.fixtures import all_captions

torch.set_num_threads(1)
TOL = 1e-4
CLEAN = all_captions()[:6]  # no punctuation: open_clip's cleaning leaves them as they are


def _images() -> list[Image.Image]:
    # non-square and non-RGB too, so the resize, crop and mode conversion are compared
    torch.manual_seed(3)
    noise = (torch.rand(45, 60, 3) * 255).to(torch.uint8).numpy()
    return [
        Image.fromarray(noise),
        Image.new("RGB", (32, 32), (200, 20, 20)),
        Image.new("L", (40, 50), 90),
    ]


@pytest.fixture(scope="module", params=["vit", "rn"])
def exported(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"oc-{request.param}")
    export = write_export(root, request.param)
    assert (
        zhclip(["export", str(export), "--format", "open_clip", "--output", str(root / "oc")]) == 0
    )
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{root / 'oc'}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{root / 'oc'}")
    return {
        "root": root,
        "export": export,
        "kind": request.param,
        "oc": model.eval(),
        "preprocess": preprocess,
        "tokenizer": tokenizer,
        "zh": load_export(export),
    }


def test_open_clip_loads_the_folder_and_gives_zhclip_features(exported):
    oc, preprocess, tokenizer = exported["oc"], exported["preprocess"], exported["tokenizer"]
    zh_model, zh_tok, zh_transform = exported["zh"]
    assert type(oc).__name__ == "CustomTextCLIP"
    assert type(oc.visual).__name__ == (
        "ModifiedResNet" if exported["kind"] == "rn" else "VisionTransformer"
    )
    images = _images()
    with torch.no_grad():
        ours = embed_image_stream(zh_model, zh_transform, images)
        theirs = oc.encode_image(torch.stack([preprocess(im) for im in images]), normalize=True)
        assert float((ours - theirs).abs().max()) < TOL
        # captions open_clip's cleaning leaves unchanged: same ids, same features
        ids = tokenizer(CLEAN)
        assert torch.equal(ids, zh_tok(CLEAN)[0])
        text = oc.encode_text(ids, normalize=True)
        assert float((embed_captions(zh_model, zh_tok, CLEAN) - text).abs().max()) < TOL
        # any caption, as token ids fed directly: same features
        zh_ids, zh_mask = zh_tok(PUNCTUATED)
        direct = oc.encode_text(zh_ids, normalize=True)
        assert float((zh_model.encode_text(zh_ids, zh_mask) - direct).abs().max()) < TOL
    assert float(oc.logit_scale.detach()) == pytest.approx(3.3)


def test_ftfy_folds_full_width_punctuation_and_cleaning_changes_says_so(exported):
    """The known trap: open_clip's tokenizer folds "，" to ","; zhclip keeps it."""
    tokenizer, (_, zh_tok, _) = exported["tokenizer"], exported["zh"]
    theirs, ours = tokenizer(PUNCTUATED), zh_tok(PUNCTUATED)[0]
    assert not torch.equal(theirs, ours)
    assert torch.equal(theirs, zh_tok(FOLDED)[0])  # exactly the folded spelling's ids
    assert cleaning_changes(PUNCTUATED) == [True] * len(PUNCTUATED)
    assert cleaning_changes(CLEAN + FOLDED + ["“引号”里的字"]) == [False] * (len(CLEAN) + 4)


def test_folder_holds_the_config_weights_and_tokenizer(exported):
    folder = exported["root"] / "oc"
    cfg = json.loads((folder / CONFIG_FILE).read_text())
    text_cfg = cfg["model_cfg"]["text_cfg"]
    assert text_cfg["hf_model_name"] == str(folder.resolve())
    assert text_cfg["context_length"] == 16
    assert cfg["preprocess_cfg"]["size"] == 32
    assert (folder / WEIGHTS_FILE).is_file() and (folder / "vocab.txt").is_file()
    assert not list(folder.parent.glob(".oc.*"))  # no temporary folder left behind


def test_a_model_open_clip_cannot_hold_is_refused_in_one_line(exported, tmp_path, capsys):
    data = read_weights_file(exported["export"])
    bert = {**data["spec"]["text"]["bert_config"], "pad_token_id": 3}
    bad = {**data, "spec": {**data["spec"], "text": {"bert_config": bert}}}
    with pytest.raises(CannotConvert, match="pad_token_id is 3 but \\[PAD\\] is id 0"):
        write_open_clip(bad, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    torch.save({"x": 1}, tmp_path / "junk.pt")
    assert (
        zhclip(
            [
                "export",
                str(tmp_path / "junk.pt"),
                "--format",
                "open_clip",
                "--output",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "neither a zhclip export" in err


def test_onnx_only_flags_are_refused_for_other_formats(exported, tmp_path, capsys):
    assert (
        zhclip(
            [
                "export",
                str(exported["export"]),
                "--format",
                "open_clip",
                "--fp16",
                "--output",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "apply to --format onnx only" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
