"""Stage 3 on the real DirectRunner: near-duplicate images by perceptual hash, and
Visual Genome region pairs cropped to their boxes."""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image, ImageDraw
from zhclip.filters import image_rules
from zhclip.pipeline.core import reasons as RS
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.core.config import config_from_dict
from zhclip.pipeline.demo.synthetic import Row, write_download_shard
from zhclip.pipeline.score.job import run_score
from zhclip.pipeline.shards import format as SH


def scene(seed: int, flip: bool = False) -> Image.Image:
    """A photo-like picture: a sky gradient and a few discs (seeded)."""
    rng = random.Random(seed)
    img = Image.new("RGB", (320, 320))
    d = ImageDraw.Draw(img)
    for y in range(320):
        d.line([(0, y), (320, y)], fill=(40 + y // 3, 90 + y // 5, 200 - y // 3))
    for _ in range(6):
        x, y, r = rng.randrange(320), rng.randrange(320), rng.randrange(20, 90)
        d.ellipse([x - r, y - r, x + r, y + r], fill=tuple(rng.randrange(256) for _ in range(3)))
    return img.transpose(Image.Transpose.FLIP_TOP_BOTTOM) if flip else img


def jpeg(img: Image.Image, size: int, quality: int) -> bytes:
    out = io.BytesIO()
    img.resize((size, size), Image.Resampling.BICUBIC).save(out, "JPEG", quality=quality)
    return out.getvalue()


def _cfg(out: Path, **score) -> object:
    return config_from_dict({
        "output": str(out), "score": {"backend": "precomputed", **score},
        "sources": [{"name": "vg_zh", "kind": "visual_genome", "paths": ["x"], "image_data": "y",
                     "dedup": "url_caption", "mode": "regions"}],
        "shards": {"samples_per_shard": 4, "val_fraction": 0.0},
    })


def _reasons(out: Path) -> dict[str, str]:
    t = pq.read_table(out / "rejects" / "score-00000.parquet")
    return dict(zip(t.column(S.KEY).to_pylist(), t.column(S.REASON).to_pylist(), strict=True))


def _copies_folder(folder: Path) -> None:
    base = scene(1)
    rows = [
        # the same picture at two qualities and two sizes, under four URLs (keys)
        Row("wukong_c", image=jpeg(base, 320, 95)), Row("wukong_a", image=jpeg(base, 320, 50)),
        Row("wukong_d", image=jpeg(base, 224, 90)), Row("wukong_b", image=jpeg(base, 160, 60)),
        # same colours, other picture: the flipped sky, and other discs
        Row("wukong_e", image=jpeg(scene(1, flip=True), 320, 95)), Row("wukong_f", image=jpeg(scene(2), 320, 95)),
    ]
    write_download_shard(folder / SH.DOWNLOADS_DIR, "00000", rows[:3], seed=1)
    write_download_shard(folder / SH.DOWNLOADS_DIR, "00001", rows[3:], seed=2)


def _dataset_bytes(root) -> dict[str, bytes]:
    """Every file of the final dataset (split folders included), by relative path."""
    folder = root / SH.DATASET_DIR
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_reencoded_and_resized_copies_end_as_one_sample_and_rerun_is_identical(tmp_path):
    _copies_folder(tmp_path)
    report = run_score(_cfg(tmp_path), [])
    kept = sorted(SH.read_dataset_table(str(tmp_path / SH.DATASET_DIR)).column(S.KEY).to_pylist())
    assert kept == ["wukong_a", "wukong_e", "wukong_f"]  # smallest key of the copies survives
    assert _reasons(tmp_path) == {k: RS.REASON_NEAR_DUPLICATE_IMAGE for k in ("wukong_b", "wukong_c", "wukong_d")}
    assert report["total"]["balanced"] and report["total"]["rows_in"] == 6
    first = _dataset_bytes(tmp_path)
    run_score(_cfg(tmp_path), [])
    assert _dataset_bytes(tmp_path) == first


def test_banding_groups_copies_an_exact_hash_misses(tmp_path):
    base = scene(7)  # at these encodings its phash moves by 2 bits
    rows = [Row("wukong_a", image=jpeg(base, 320, 95)), Row("wukong_b", image=jpeg(base, 224, 90)),
            Row("wukong_c", image=jpeg(scene(8), 320, 95))]
    write_download_shard(tmp_path / "x" / SH.DOWNLOADS_DIR, "00000", rows)
    write_download_shard(tmp_path / "y" / SH.DOWNLOADS_DIR, "00000", rows)
    exact = run_score(_cfg(tmp_path / "x"), [])
    assert exact["total"]["kept"] == 3
    banded = run_score(_cfg(tmp_path / "y", near_duplicate_distance=4), [])
    assert _reasons(tmp_path / "y") == {"wukong_b": RS.REASON_NEAR_DUPLICATE_IMAGE}
    assert banded["total"]["kept"] == 2 and banded["total"]["balanced"]


def test_band_keys_pigeonhole_and_losers():
    a = 0x0123456789ABCDEF
    for k in (1, 3, 7):
        b = a ^ sum(1 << (i * 9) for i in range(k))  # k flipped bits spread over the hash
        assert set(image_rules.band_keys(a, k)) & set(image_rules.band_keys(b, k))
    assert image_rules.near_duplicate_losers([("z", a), ("y", a ^ 1), ("x", a ^ 0xFF00)], 1) == ["z"]


def _tar_images(out: Path) -> dict[str, tuple[int, int]]:
    sizes = {}
    for tar_path in sorted((out / SH.DATASET_DIR).rglob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".jpg"):
                    sizes[m.name.rsplit("/", 1)[-1][:-4]] = Image.open(tar.extractfile(m)).size
    return sizes


def test_region_pairs_are_cropped_to_their_scaled_box(tmp_path):
    # VG says the image is 800x600; it was downloaded at that size and stored at
    # 400x300 (keep_ratio), so boxes halve. One box lies outside the image.
    stored = jpeg(scene(3), 400, 95)
    stored = Image.open(io.BytesIO(stored)).resize((400, 300))
    buf = io.BytesIO()
    stored.save(buf, "JPEG", quality=95)
    size = {S.SOURCE_WIDTH: 800, S.SOURCE_HEIGHT: 600, S.ORIGINAL_WIDTH: 800, S.ORIGINAL_HEIGHT: 600}
    boxes = {"vg_zh_1": (100, 50, 200, 120), "vg_zh_2": (0, 0, 800, 600), "vg_zh_3": (900, 700, 50, 50)}
    rows = [Row(k, source="vg_zh", caption="一辆红色的公共汽车", image=buf.getvalue(),
                extra={**size, S.REGION_X: x, S.REGION_Y: y, S.REGION_W: w, S.REGION_H: h})
            for k, (x, y, w, h) in boxes.items()]
    rows.append(Row("vg_zh_9", source="vg_zh", caption="繁忙的街道上有很多人", image=buf.getvalue(), extra=size))
    write_download_shard(tmp_path / SH.DOWNLOADS_DIR, "00000", rows)
    report = run_score(_cfg(tmp_path, near_duplicates=False, dedup_images=False), [])
    sizes = _tar_images(tmp_path)
    assert sizes["vg_zh_1"] == (100, 60) and sizes["vg_zh_2"] == (400, 300)
    assert sizes["vg_zh_9"] == (400, 300)  # a pair without a box keeps the whole image
    assert _reasons(tmp_path) == {"vg_zh_3": RS.REASON_BAD_REGION}
    meta = {r[S.KEY]: r for r in SH.read_dataset_table(str(tmp_path / SH.DATASET_DIR)).to_pylist()}
    assert (meta["vg_zh_1"][S.WIDTH], meta["vg_zh_1"][S.HEIGHT]) == (100, 60)
    assert report["total"]["balanced"]


def test_scaled_box_center_crop():
    # 800x600 original, center_crop to 224: scale 224/600, 37.33 px cut on each side
    assert image_rules.scaled_box((100, 0, 500, 600), (800, 600), (800, 600), (224, 224)) == (0, 0, 187, 224)
    assert image_rules.scaled_box((0, 0, 10, 10), (800, 600), (800, 600), (224, 224)) is None  # cropped away
    assert image_rules.scaled_box((None, 0, 5, 5), (800, 600), (800, 600), (224, 224)) is None
    json.dumps(image_rules.band_keys(1, 3))


def test_url_caption_sources_keep_distinct_captions_of_one_image(tmp_path):
    base = scene(1)
    rows = [Row("vg_zh_1", source="vg_zh", caption="繁忙的街道上有一辆公共汽车", image=jpeg(base, 320, 95)),
            Row("vg_zh_2", source="vg_zh", caption="蓝色的天空和白色的云朵", image=jpeg(base, 224, 90)),
            Row("vg_zh_3", source="vg_zh", caption="蓝色的天空和白色的云朵", image=jpeg(base, 160, 60))]
    write_download_shard(tmp_path / SH.DOWNLOADS_DIR, "00000", rows)
    report = run_score(_cfg(tmp_path), [])
    assert _reasons(tmp_path) == {"vg_zh_3": RS.REASON_NEAR_DUPLICATE_IMAGE}
    assert report["total"]["kept"] == 2 and report["total"]["balanced"]
