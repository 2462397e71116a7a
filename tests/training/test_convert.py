"""zhclip <-> Chinese-CLIP and transformers ChineseCLIPModel, through each library's own
model code: features agree within 1e-4 both ways, and a format that cannot hold a
model refuses it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from zhclip.pipeline.cli import main as cli_main
from zhclip.training.config import train_config_from_dict
from zhclip.training.convert import (
    CannotConvert,
    detect_format,
    export_to,
    read_init_weights,
)
from zhclip.training.export import export_model, read_weights_file
from zhclip.training.export_fixtures import cn_clip_reference_model, trained_looking
from zhclip.training.fixtures import (
    TINY_RN,
    all_captions,
    tiny_train_section,
    write_tiny_bert,
    write_tiny_image_tower,
)
from zhclip.training.model import ChineseCLIP, build_model, load_weights, model_from_spec
from zhclip.training.tokenizer import load_tokenizer

torch.set_num_threads(1)
TOL = 1e-4
CAPTIONS = all_captions()[:4]


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    root = tmp_path_factory.mktemp("convert")
    return {
        "root": root,
        "vit": write_tiny_image_tower(root / "vit", name="Tiny-ViT-cv"),
        "rn": write_tiny_image_tower(root / "rn", name="Tiny-RN-cv", cfg=TINY_RN),
        "bert": write_tiny_bert(root / "bert"),
    }


def _exported(towers, tmp_path: Path, kind: str = "vit", quick_gelu: bool = True) -> Path:
    """A trained-looking export: every weight moved off its init, so a dropped or
    mis-transposed tensor shows in the features."""
    image = {**towers[kind], "quick_gelu": quick_gelu}
    section = tiny_train_section(towers["root"], image, towers["bert"])
    torch.manual_seed(0)
    model = trained_looking(build_model(train_config_from_dict(section)))
    return export_model(model, load_tokenizer(str(towers["bert"]), 16), tmp_path / "export.pt")


def _inputs(towers, size: int = 32):
    torch.manual_seed(1)
    pixels = torch.randn(3, 3, size, size)
    ids, mask = load_tokenizer(str(towers["bert"]), 16)(CAPTIONS)
    return pixels, ids, mask


def _zhclip(path: Path) -> ChineseCLIP:
    data = read_weights_file(path)
    model = model_from_spec(data["spec"])
    load_weights(model, data["state_dict"])
    return model.eval()


@torch.no_grad()
def _features(model: ChineseCLIP, pixels, ids, mask):
    return model.encode_image(pixels), model.encode_text(ids, mask)


def _close(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


# ---- Chinese-CLIP ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["vit", "rn"])
def test_cn_clip_round_trip_keeps_features(towers, tmp_path, kind):
    export = _exported(towers, tmp_path, kind)
    spec = read_weights_file(export)["spec"]
    ours = _zhclip(export)
    pixels, ids, mask = _inputs(towers)
    img, txt = _features(ours, pixels, ids, mask)

    ckpt = export_to("cn_clip", read_weights_file(export), tmp_path / "cn")
    theirs = cn_clip_reference_model(tmp_path / "cn" / "zhclip.pt", spec).eval()
    with torch.no_grad():
        cn_img = theirs.encode_image(pixels)
        cn_txt = theirs.encode_text(ids)  # cn_clip masks by [PAD] itself
    cn_img, cn_txt = (torch.nn.functional.normalize(t, dim=-1) for t in (cn_img, cn_txt))
    assert _close(img, cn_img) < TOL
    assert _close(txt, cn_txt) < TOL
    assert theirs.logit_scale.item() == pytest.approx(3.3)

    assert detect_format(ckpt) == "cn_clip"
    back = model_from_spec(spec)
    load_weights(back, read_init_weights(ckpt))
    back_img, back_txt = _features(back.eval(), pixels, ids, mask)
    assert _close(img, back_img) < TOL and _close(txt, back_txt) < TOL


def test_cn_clip_refuses_a_gelu_vit(towers, tmp_path):
    export = _exported(towers, tmp_path, "vit", quick_gelu=False)
    with pytest.raises(CannotConvert, match="uses GELU, but cn_clip always builds QuickGELU"):
        export_to("cn_clip", read_weights_file(export), tmp_path / "cn")
    assert not (tmp_path / "cn" / "zhclip.pt").exists()


# ---- transformers ChineseCLIPModel ---------------------------------------------------


@pytest.mark.parametrize("quick_gelu", [True, False])
def test_hf_round_trip_keeps_features(towers, tmp_path, quick_gelu):
    """HF's vision config has both activations, so GELU ViTs export too."""
    from transformers import ChineseCLIPModel

    export = _exported(towers, tmp_path, "vit", quick_gelu=quick_gelu)
    spec = read_weights_file(export)["spec"]
    pixels, ids, mask = _inputs(towers)
    img, txt = _features(_zhclip(export), pixels, ids, mask)

    folder = export_to("hf", read_weights_file(export), tmp_path / "hf")
    theirs = ChineseCLIPModel.from_pretrained(str(folder)).eval()
    # forward(), not get_text_features(): in transformers 4.57 the latter reads the
    # pooler output, which ChineseCLIPModel's own text tower never builds (None).
    with torch.no_grad():
        out = theirs(input_ids=ids, attention_mask=mask, pixel_values=pixels)
    hf_img, hf_txt = out.image_embeds, out.text_embeds
    assert _close(img, hf_img) < TOL
    assert _close(txt, hf_txt) < TOL

    assert detect_format(folder) == "hf"
    back = model_from_spec(spec)
    load_weights(back, read_init_weights(folder))
    back_img, back_txt = _features(back.eval(), pixels, ids, mask)
    assert _close(img, back_img) < TOL and _close(txt, back_txt) < TOL


def test_hf_folder_works_in_the_zero_shot_pipeline(towers, tmp_path):
    """transformers.pipeline loads the folder's processor itself; its scores are
    zhclip's softmax over exp(logit_scale) * cosine on the same pixels."""
    from transformers import ChineseCLIPProcessor, pipeline

    export = _exported(towers, tmp_path)
    folder = export_to("hf", read_weights_file(export), tmp_path / "hf")
    image = Image.new("RGB", (48, 40), (200, 30, 30))
    classify = pipeline("zero-shot-image-classification", model=str(folder), device="cpu")
    got = {r["label"]: r["score"] for r in classify(image, candidate_labels=CAPTIONS,
                                                    hypothesis_template="{}")}

    pixels = ChineseCLIPProcessor.from_pretrained(str(folder))(
        images=image, return_tensors="pt")["pixel_values"]
    ours = _zhclip(export)
    _, ids, mask = _inputs(towers)
    img, txt = _features(ours, pixels, ids, mask)
    probs = (ours.logit_scale.exp() * img @ txt.T).softmax(-1)[0]
    assert sorted(got) == sorted(CAPTIONS)
    for caption, p in zip(CAPTIONS, probs.tolist(), strict=True):
        assert got[caption] == pytest.approx(p, abs=TOL)


def test_hf_refuses_a_resnet(towers, tmp_path):
    export = _exported(towers, tmp_path, "rn")
    with pytest.raises(CannotConvert, match="ResNet; transformers' ChineseCLIPModel has only ViT"):
        export_to("hf", read_weights_file(export), tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


# ---- the command ----------------------------------------------------------------------


def test_export_command_writes_and_refuses(towers, tmp_path, capsys):
    export = _exported(towers, tmp_path, "rn")
    assert cli_main(["export", str(export), "--format", "cn_clip",
                     "--output", str(tmp_path / "cn")]) == 0
    assert (tmp_path / "cn" / "zhclip.pt").is_file()
    assert cli_main(["export", str(export), "--format", "hf", "--output", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert "zhclip export: error: cannot export to hf" in err and "ResNet" in err


def test_unknown_init_weights_are_a_clear_error(tmp_path):
    torch.save({"weights": {}}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="neither a zhclip export/checkpoint nor a cn_clip"):
        read_init_weights(tmp_path / "x.pt")
    (tmp_path / "d").mkdir()
    with pytest.raises(ValueError, match="not a transformers ChineseCLIPModel"):
        read_init_weights(tmp_path / "d")
