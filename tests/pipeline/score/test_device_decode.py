"""The CUDA decode path's pieces, run on CPU tensors: which files fall back, and the pixel math."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from zhclip.filters import images as I
from zhclip.pipeline.core.config import config_from_dict
from zhclip.pipeline.demo.synthetic import Row, make_jpeg, write_download_shard
from zhclip.pipeline.score import device_decode as D
from zhclip.pipeline.score import steps as ST
from zhclip.pipeline.score.backends import build_scorer
from zhclip.pipeline.score.tiny_mclip import build_tiny_models
from zhclip.pipeline.shards import downloads as DL


def _photo(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([np.sin(x / rng.uniform(5, 20)), np.cos(y / rng.uniform(5, 20)),
                     np.sin((x + y) / rng.uniform(5, 20))], axis=-1)
    return Image.fromarray((base * 90 + 128 + rng.normal(0, 8, base.shape)).clip(0, 255).astype(np.uint8))


def _encode(img: Image.Image, **kw) -> bytes:
    out = io.BytesIO()
    img.save(out, **{"format": "JPEG", "quality": 92, **kw})
    return out.getvalue()


BASELINE = _encode(_photo(300, 200))
GREY = _encode(_photo(120, 260).convert("L"))
PROGRESSIVE = _encode(_photo(300, 200), progressive=True)
CMYK = _encode(_photo(300, 200).convert("CMYK"))
PNG = make_jpeg(3, fmt="PNG")


@pytest.mark.parametrize(("data", "expected"), [
    (BASELINE, True), (GREY, True), (PROGRESSIVE, False), (CMYK, False), (PNG, False),
    (b"", False), (b"\xff\xd8\xff", False), (b"<html>404</html>", False),
    (BASELINE[:40], False),  # header cut before the frame
])
def test_only_plain_8bit_sequential_jpegs_go_to_the_device(data, expected):
    assert D.device_decodable(data) is expected


def test_header_gives_the_size_pil_sees():
    for data in (BASELINE, GREY, PROGRESSIVE, CMYK):
        header = D.read_jpeg_header(data)
        with Image.open(io.BytesIO(data)) as img:
            assert (header.width, header.height) == img.size
    assert D.read_jpeg_header(CMYK).components == 4
    assert D.read_jpeg_header(PROGRESSIVE).sof == 0xC2


@pytest.mark.parametrize("size", [(300, 200), (120, 260), (224, 224), (224, 500), (640, 225), (97, 61)])
def test_resize_crop_matches_the_pil_path_within_one_level(size):
    data = _encode(_photo(*size, seed=size[0]), quality=98)
    ref = I.clip_pixels(I.decode_image(data), 224).astype(np.int16)
    ours = D.resize_crop(decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                                     mode=ImageReadMode.RGB), 224)
    assert tuple(ours.shape) == (3, 224, 224)
    diff = np.abs(ours.permute(1, 2, 0).numpy().astype(np.int16) - ref)
    # Same geometry (a shifted crop gives tens of levels) and PIL's kernel and rounding
    # (one float pass, or a = -0.75, gives ~0.2 levels on average).
    assert diff.max() <= 1 and diff.mean() < 0.01


def test_crop_box_is_the_same_arithmetic_as_filters_images():
    for w, h in [(300, 200), (201, 1000), (224, 224), (225, 640)]:
        new_w, new_h, top, left = D.crop_box(w, h, 224)
        resized = I.resize_shortest_side(Image.new("RGB", (w, h)), 224)
        assert resized.size == (new_w, new_h)
        assert (top, left) == (int(round((new_h - 224) / 2.0)), int(round((new_w - 224) / 2.0)))


def test_decode_batch_falls_back_only_for_what_the_device_rejects():
    blobs = [BASELINE, PNG, PROGRESSIVE, b"broken", CMYK, GREY]
    asked = []

    def cpu_pixels(i):
        asked.append(i)
        try:
            return I.clip_pixels(I.decode_image(blobs[i]), 224)
        except I.ImageDecodeError:
            return None

    batch, fallback, failed = D.decode_batch(blobs, 224, I.OPENAI_MEAN, I.OPENAI_STD, "cpu", cpu_pixels)
    assert fallback == asked == [1, 2, 3, 4] and failed == [3]
    assert tuple(batch.shape) == (5, 3, 224, 224) and batch.dtype == torch.float32
    # Row 1 is the PNG's CPU pixels, normalised like the scorer does.
    ref = (torch.from_numpy(cpu_pixels(1)).permute(2, 0, 1).float() / 255.0
           - torch.tensor(I.OPENAI_MEAN).view(3, 1, 1)) / torch.tensor(I.OPENAI_STD).view(3, 1, 1)
    assert torch.allclose(batch[1], ref, atol=1e-6)


def test_device_path_is_off_without_cuda():
    assert D.device_decode_wanted("cpu") is False
    assert D.device_decode_wanted("cuda") is torch.cuda.is_available()


def test_shard_scorer_device_path_scores_equal_the_plain_path(tmp_path):
    models = build_tiny_models(tmp_path / "models")
    rows = [Row(f"wukong_{i:02d}", image=_encode(_photo(180 + 13 * i, 150 + 7 * i, seed=i)))
            for i in range(8)]
    rows += [Row("wukong_png", image=PNG), Row("wukong_prog", image=PROGRESSIVE),
             Row("wukong_cmyk", image=CMYK), Row("wukong_html", image=b"<html>404</html>")]
    write_download_shard(tmp_path / "dl", "00000", rows, seed=1)
    shard = DL.list_download_shards(str(tmp_path / "dl"))[0]
    cfg = config_from_dict({"output": str(tmp_path), "score": {
        **models, "batch_size": 5, "device": "cpu", "thresholds": {}, "decode_workers": 0}})
    out = {}
    for device_decode in (False, True):
        scorer = ST.ShardScorer(build_scorer(cfg.score), cfg.score, 0.0, [], thresholds={},
                                device_decode=device_decode)
        result, _ = scorer.score_shard(shard)
        scorer.close()
        out[device_decode] = result
    plain, dev = out[False], out[True]
    assert [r["key"] for r in dev.kept] == [r["key"] for r in plain.kept] and len(plain.kept) == 11
    strip = ("score",)
    for a, b in zip(plain.kept, dev.kept, strict=True):
        assert {k: v for k, v in a.items() if k not in strip} == {k: v for k, v in b.items() if k not in strip}
        assert abs(a["score"] - b["score"]) < 1e-3, (a["key"], [(x["key"], x["score"], y["score"]) for x, y in zip(plain.kept, dev.kept, strict=True)])
    assert [r["key"] for r in dev.rejects] == [r["key"] for r in plain.rejects] == ["wukong_html"]
