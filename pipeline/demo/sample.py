"""A deterministic demo sample in all four source formats, with its images.

Images are coloured shapes on coloured backgrounds and every caption says what
is drawn (in Chinese, or in English for COCO / Visual Genome, translated by a
lookup table), so a tiny model can learn the pairing in minutes. The sample
also holds rows that each stage-1 rule must reject, so the demo's funnel shows
every reason.
"""

from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

COLORS = [  # (zh, en, rgb)
    ("红色", "red", (220, 30, 30)),
    ("绿色", "green", (30, 170, 60)),
    ("蓝色", "blue", (30, 70, 220)),
    ("黄色", "yellow", (240, 210, 20)),
    ("紫色", "purple", (140, 40, 180)),
    ("橙色", "orange", (250, 130, 20)),
]
SHAPES = [("圆形", "circle"), ("正方形", "square"), ("三角形", "triangle"), ("十字", "cross")]
BACKGROUNDS = [("白色", "white", (245, 245, 245)), ("黑色", "black", (20, 20, 20)),
               ("灰色", "gray", (128, 128, 128))]
ZH_TEMPLATES = [
    "{bg}背景上有一个{color}的{shape}",
    "画面中央是一个{color}{shape}，背景是{bg}",
    "一个{color}的{shape}放在{bg}的桌面上",
    "{bg}底色的图片里画着{color}{shape}",
]
EN_TEMPLATES = [
    "a {color} {shape} on a {bg} background",
    "a {color} {shape} in the middle of a {bg} picture",
]
EN_REGIONS = ["{color} {shape} on {bg}", "a {bg} background behind the {color} {shape}"]
ZH_REGIONS = ["{bg}背景上的{color}{shape}图案", "{color}{shape}后面是{bg}的背景"]

# Captions that each rule must reject (kept realistic on purpose).
TOO_SHORT = ["红色圆", "小猫", "蓝天"]
TOO_LONG = ["这是一张在阳光明媚的春日午后拍摄的照片，画面里有一个红色的圆形气球飘在湛蓝的天空中，远处是连绵起伏的青山和金黄色的油菜花田，美不胜收"]
BLACKLISTED = [
    "全场包邮红色圆形抱枕限时促销",       # advertising
    "厂家直销蓝色正方形收纳盒批发",       # advertising
    "IMG_20190512_143022.jpg",           # filename
    "DSC01234 蓝色三角形",                # camera default
    "图片来源：视觉中国 黄色圆形标志",     # watermark / stock
    "紫色十字图案 版权所有 翻版必究",      # watermark
    "加微信 abc12345 购买橙色圆形贴纸",    # contact
    "咨询电话 13812345678 红色三角形",     # contact
]


@dataclass(frozen=True)
class Drawn:
    name: str
    color: int
    shape: int
    bg: int


def draw(d: Drawn, size: int = 256) -> Image.Image:
    """Render one coloured shape; sizes and offsets vary so crops still work."""
    rng = random.Random(d.name)
    img = Image.new("RGB", (size, size), BACKGROUNDS[d.bg][2])
    g = ImageDraw.Draw(img)
    c = COLORS[d.color][2]
    r = rng.randint(size // 4, size // 3)
    cx = size // 2 + rng.randint(-size // 10, size // 10)
    cy = size // 2 + rng.randint(-size // 10, size // 10)
    kind = SHAPES[d.shape][1]
    if kind == "circle":
        g.ellipse([cx - r, cy - r, cx + r, cy + r], fill=c)
    elif kind == "square":
        g.rectangle([cx - r, cy - r, cx + r, cy + r], fill=c)
    elif kind == "triangle":
        g.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=c)
    else:
        w = r // 3
        g.rectangle([cx - w, cy - r, cx + w, cy + r], fill=c)
        g.rectangle([cx - r, cy - w, cx + r, cy + w], fill=c)
    return img


def zh_caption(d: Drawn, rng: random.Random) -> str:
    t = rng.choice(ZH_TEMPLATES)
    return t.format(color=COLORS[d.color][0], shape=SHAPES[d.shape][0], bg=BACKGROUNDS[d.bg][0])


def en_caption(d: Drawn, rng: random.Random) -> str:
    t = rng.choice(EN_TEMPLATES)
    return t.format(color=COLORS[d.color][1], shape=SHAPES[d.shape][1], bg=BACKGROUNDS[d.bg][1])


def translate_en(en: str) -> str:
    """The lookup table's Chinese for a generated English caption."""
    for (czh, cen, _), (szh, sen), (bzh, ben, _) in (
        (c, s, b) for c in COLORS for s in SHAPES for b in BACKGROUNDS
    ):
        for i, t in enumerate(EN_TEMPLATES):
            if t.format(color=cen, shape=sen, bg=ben) == en:
                return ZH_TEMPLATES[i].format(color=czh, shape=szh, bg=bzh)
        for i, t in enumerate(EN_REGIONS):
            if t.format(color=cen, shape=sen, bg=ben) == en:
                return ZH_REGIONS[i].format(color=czh, shape=szh, bg=bzh)
    raise KeyError(en)


def generate_sample(root: str | Path, base_url: str, n_images: int = 240, seed: int = 0) -> dict:
    """Write the sample under ``root`` and return a summary.

    ``base_url`` is where root/images/ will be served (the demo starts a
    loopback server there). Returns paths and the counts the rules should give.
    """
    root = Path(root)
    rng = random.Random(seed)
    base_url = base_url.rstrip("/")
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    combos = [(c, s, b) for c in range(len(COLORS)) for s in range(len(SHAPES)) for b in range(len(BACKGROUNDS))]
    drawn = []
    for i in range(n_images):
        c, s, b = combos[i % len(combos)]
        d = Drawn(f"img{i:05d}", c, s, b)
        draw(d).save(img_dir / f"{d.name}.jpg", quality=90)
        drawn.append(d)
    url = {d.name: f"{base_url}/images/{d.name}.jpg" for d in drawn}
    # Split images between sources: 50% LAION, 25% Wukong, 12.5% COCO, 12.5% VG.
    q = n_images // 8
    laion_imgs, wukong_imgs = drawn[: 4 * q], drawn[4 * q: 6 * q]
    coco_imgs, vg_imgs = drawn[6 * q: 7 * q], drawn[7 * q:]
    _write_laion(root / "laion", laion_imgs, url, rng, base_url)
    _write_wukong(root / "wukong", wukong_imgs, url, rng, laion_imgs)
    _write_coco(root / "coco", coco_imgs, url, rng)
    _write_vg(root / "vg", vg_imgs, url, rng, coco_imgs)
    return {"root": str(root), "images": n_images, "image_dir": str(img_dir)}


def _write_laion(folder: Path, imgs: list[Drawn], url: dict, rng: random.Random, base_url: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    sid = 1_000_000
    for i, d in enumerate(imgs):
        sid += 1
        caption = zh_caption(d, rng)
        sim = round(rng.uniform(0.27, 0.40), 4)
        if i % 25 == 3:
            sim = round(rng.uniform(0.10, 0.25), 4)  # would fail the 0.26 rule
        rows.append((sid, url[d.name], caption, 256, 256, "?", "zh", "UNLIKELY", sim))
    extras = [
        *[(t, "zh") for t in TOO_SHORT + TOO_LONG + BLACKLISTED[:4]],
        ("A red circle on a white background", "en"),
        ("白い背景に赤い丸", "ja"),
        ("A blue square, photographed in a studio", "en"),
    ]
    for j, (caption, lang) in enumerate(extras):
        sid += 1
        rows.append((sid, f"{base_url}/images/{imgs[j % len(imgs)].name}.jpg?v={j}", caption, 256, 256,
                     "?", lang, "UNLIKELY", 0.3))
    # Rule triggers on the URL side.
    sid += 1
    rows.append((sid, "http://192.168.1.20/private.jpg", "局域网里的一张红色圆形图片", 256, 256, "?", "zh", "UNLIKELY", 0.3))
    sid += 1
    rows.append((sid, "not a url", "一个没有网址的黄色三角形", 256, 256, "?", "zh", "UNLIKELY", 0.3))
    sid += 1
    rows.append((sid, url[imgs[0].name], "同一张图的另一条红色描述文字", 256, 256, "?", "zh", "UNLIKELY", 0.3))
    cols = list(zip(*rows, strict=True))
    table = pa.table({
        "SAMPLE_ID": pa.array(cols[0], pa.int64()), "URL": cols[1], "TEXT": cols[2],
        "HEIGHT": pa.array(cols[3], pa.int32()), "WIDTH": pa.array(cols[4], pa.int32()),
        "LICENSE": cols[5], "LANGUAGE": cols[6], "NSFW": cols[7],
        "similarity": pa.array(cols[8], pa.float64()),
    })
    pq.write_table(table, folder / "part-00000.parquet")


def _write_wukong(folder: Path, imgs: list[Drawn], url: dict, rng: random.Random, laion_imgs: list[Drawn]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["url", "caption"])
    for i, d in enumerate(imgs):
        cap = zh_caption(d, rng)
        if i == 0:
            cap = cap + "，很好看"  # a quoted comma
        if i == 1:
            cap = cap[:6] + "\n" + cap[6:]  # a newline inside quotes
        w.writerow([url[d.name], cap])
    for j, cap in enumerate(BLACKLISTED[4:]):
        w.writerow([url[imgs[j].name] + f"?w={j}", cap])
    w.writerow([url[laion_imgs[1].name], "与LAION重复的一张红色图片"])  # cross-source duplicate
    base = url[imgs[0].name].rsplit("/images/", 1)[0]
    w.writerow([f"{base}/images/deleted-long-ago.jpg", "一张已经被删除的蓝色圆形图片"])  # dead link: 404
    w.writerow([f"{base}/vg/zh.tsv", "链接指向的不是图片而是文本文件"])  # not an image
    data = buf.getvalue().encode("utf-8")
    data += b"http://img.example.com/a.jpg,broken,extra,fields\n"  # wrong field count
    data += b"http://img.example.com/b.jpg,\xff\xfe invalid utf-8 caption\n"
    (folder / "wukong_100m_0.csv").write_bytes(data)


def _write_coco(folder: Path, imgs: list[Drawn], url: dict, rng: random.Random) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    ann_id = 500_000
    for i, d in enumerate(imgs):
        image_id = 100_000 + i
        images.append({"id": image_id, "file_name": f"COCO_train2014_{image_id:012d}.jpg",
                       "coco_url": url[d.name], "width": 256, "height": 256, "license": 1})
        for _ in range(2):
            en = en_caption(d, rng)
            ann_id += 1
            anns.append({"id": ann_id, "image_id": image_id, "caption": en})
    anns.append({"id": ann_id + 1, "image_id": 100_000, "caption": "an untranslatable sentence about nothing"})
    anns.append({"id": ann_id + 2, "image_id": 100_000, "caption": ["not", "a", "string"]})
    data = {"info": {}, "images": images, "annotations": anns, "licenses": []}
    (folder / "captions_train2014.json").write_text(json.dumps(data), encoding="utf-8")
    # Two held-out images: the Karpathy / COCO-CN test split stand-in.
    (folder / "test_image_ids.txt").write_text("# held-out COCO ids\n100001\n100002\n", encoding="utf-8")


def _write_vg(folder: Path, imgs: list[Drawn], url: dict, rng: random.Random, coco_imgs: list[Drawn]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    image_data, regions = [], []
    rid = 9_000_000
    for i, d in enumerate(imgs):
        image_id = 2_000_000 + i
        coco_id = 100_001 if i == 0 else None  # shares a held-out COCO image
        image_data.append({"image_id": image_id, "url": url[d.name], "coco_id": coco_id,
                           "width": 256, "height": 256})
        regs = []
        for k in range(2):
            rid += 1
            phrase = EN_REGIONS[k].format(color=COLORS[d.color][1], shape=SHAPES[d.shape][1], bg=BACKGROUNDS[d.bg][1])
            regs.append({"region_id": rid, "image_id": image_id, "phrase": phrase,
                         "x": 10, "y": 12, "width": 200, "height": 180})
        regions.append({"id": image_id, "regions": regs})
    (folder / "region_descriptions.json").write_text(json.dumps(regions), encoding="utf-8")
    (folder / "image_data.json").write_text(json.dumps(image_data), encoding="utf-8")
    lines = ["# english\tchinese"]
    for c in COLORS:
        for s in SHAPES:
            for b in BACKGROUNDS:
                for t in [*EN_TEMPLATES, *EN_REGIONS]:
                    en = t.format(color=c[1], shape=s[1], bg=b[1])
                    lines.append(f"{en}\t{translate_en(en)}")
    (folder / "zh.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def sample_config(root: str | Path, output: str | Path) -> dict:
    """The demo config (as a dict) for a sample written by :func:`generate_sample`."""
    root = Path(root)
    return {
        "output": str(output),
        "sources": [
            {"name": "laion_zh", "kind": "laion", "paths": [str(root / "laion/*.parquet")], "languages": ["zh"]},
            {"name": "wukong", "kind": "wukong", "paths": [str(root / "wukong/*.csv")]},
            {"name": "coco_zh", "kind": "coco", "paths": [str(root / "coco/captions_train2014.json")],
             "holdout_ids": str(root / "coco/test_image_ids.txt"), "dedup": "url_caption",
             "translate": {"backend": "lookup", "table": str(root / "vg/zh.tsv")}},
            {"name": "vg_zh", "kind": "visual_genome", "paths": [str(root / "vg/region_descriptions.json")],
             "image_data": str(root / "vg/image_data.json"), "holdout_ids": str(root / "coco/test_image_ids.txt"),
             "dedup": "url_caption",
             "translate": {"backend": "lookup", "table": str(root / "vg/zh.tsv")}},
        ],
        "filters": {"urls": {"allow_networks": ["127.0.0.0/8"]}},
        "metadata": {"rows_per_shard": 100, "dedup_buckets": 4},
        "download": {"image_size": 64, "timeout": 5, "retries": 0, "thread_count": 8},
        "score": {"backend": "precomputed", "thresholds": {"laion": 0.26}},
        "shards": {"samples_per_shard": 100, "val_fraction": 0.1},
    }
