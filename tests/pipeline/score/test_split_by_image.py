"""The val split is drawn by image, so no caption of a val image trains the model."""

from __future__ import annotations

from collections import defaultdict

from zhclip.pipeline.demo.synthetic import make_jpeg
from zhclip.pipeline.score.steps import kept_record, prepare_sample
from zhclip.pipeline.shards import downloads as DL
from zhclip.pipeline.shards import format as SH


def _coco_caption(image_id: int, ann_id: int, jpeg: bytes) -> DL.DownloadedSample:
    url = f"http://images.cocodataset.org/train2014/COCO_train2014_{image_id:012d}.jpg"
    return DL.DownloadedSample(key=f"coco_zh_{ann_id}", source="coco_zh", url=url,
                               caption=f"第{ann_id}句", caption_orig=None, similarity=None,
                               image=jpeg, member=f"{ann_id:09d}", meta={})


def test_all_captions_of_a_coco_image_land_in_one_split():
    jpeg = make_jpeg(1)
    split_of: dict[int, set[str]] = defaultdict(set)
    for image_id in range(120):
        for n in range(5):  # COCO: five captions per image, each its own annotation id
            sample = _coco_caption(image_id, image_id * 5 + n, jpeg)
            rec = kept_record(prepare_sample(sample, None, False), None, val_fraction=0.3)
            split_of[image_id].add(rec["split"])
    assert all(len(s) == 1 for s in split_of.values()), "captions of one image were split"
    sides = [next(iter(s)) for s in split_of.values()]
    assert 15 < sides.count(SH.SPLIT_VAL) < 60  # about 30% of the images are val


def test_a_sample_without_url_is_split_by_its_key():
    sample = DL.DownloadedSample(key="x_1", source="x", url=None, caption="猫", caption_orig=None,
                                 similarity=None, image=make_jpeg(2), member="1", meta={})
    rec = kept_record(prepare_sample(sample, None, False), None, val_fraction=0.5)
    assert rec["split"] == SH.split_for_key("x_1", 0.5)
