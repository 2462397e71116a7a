"""Print the image-safety rule's false-positive rate on benign pictures and its CPU
cost per image, beside what stage 3 already spends per image (decode + phash +
colour signature + CLIP preprocess) measured in the same process.

Benign pictures: every photograph of the wheels (scikit-image, scikit-learn,
matplotlib; :mod:`zhclip.filters.near_duplicate_pairs`) after stage 2's resize,
and every shape the demo draws. None is unsafe, so every rejection is a false positive.

    python bench/safety.py [--threshold 0.6] [--batch-size 32] [--repeat 3]
"""

from __future__ import annotations

import argparse
import itertools
import time

from zhclip.filters import image_rules
from zhclip.filters import images as I
from zhclip.filters import near_duplicate_pairs as NP
from zhclip.filters.near_duplicates import colour_signature
from zhclip.pipeline.core.config import config_from_dict
from zhclip.pipeline.demo import sample as demo
from zhclip.pipeline.score import safety as SF


def benign() -> dict[str, bytes]:
    pictures = {f"photo:{n}": NP.downloaded(img) for n, img in NP.wheel_photos().items()}
    combos = itertools.product(
        range(len(demo.COLORS)), range(len(demo.SHAPES)), range(len(demo.BACKGROUNDS))
    )
    for c, s, b in combos:
        d = demo.Drawn(f"bench-{c}-{s}-{b}", c, s, b)
        pictures[f"demo:{d.name}"] = NP.encode(demo.draw(d))
    return pictures


def per_image(fn, items, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn(items)
        best = min(best, time.perf_counter() - started)
    return best / len(items)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threshold", type=float, default=0.6)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    cfg = config_from_dict(
        {
            "score": {
                "safety": {
                    "enabled": True,
                    "threshold": args.threshold,
                    "batch_size": args.batch_size,
                }
            }
        }
    ).score.safety
    model = SF.load_safety_model(cfg)
    pictures = benign()
    images = [I.decode_image(b) for b in pictures.values()]
    rejected, top = [], (0.0, "", "")
    for name, scores in zip(pictures, model.class_scores(images), strict=True):
        reason, matched = image_rules.safety_reason(scores, cfg.classes, cfg.threshold)
        if reason:
            rejected.append(f"{name}: {matched}")
        top = max(top, *((scores[c], c, name) for c in cfg.classes))
    photos = sum(n.startswith("photo:") for n in pictures)
    print(
        f"benign pictures: {len(pictures)} ({photos} wheel photos, {len(pictures) - photos} demo shapes)"
    )
    print(
        f"false positives at threshold {cfg.threshold} on {cfg.classes}: {len(rejected)} "
        f"({len(rejected) / len(pictures):.2%})"
    )
    for line in rejected:
        print(f"  {line}")
    print(
        f"highest score of those classes on a benign picture: {top[0]:.3f} ({top[1]} on {top[2]})"
    )

    def baseline(items):  # what stage 3 already does per image when hashing is on
        for data in items:
            img = I.decode_image(data)
            I.phash64(img), colour_signature(img), I.clip_preprocess(img)

    def safety(items):
        model.class_scores([I.decode_image(d) for d in items])

    data = list(pictures.values())
    base = per_image(baseline, data, args.repeat)
    cost = per_image(safety, data, args.repeat)
    print(
        f"CPU ms per image: stage-3 decode+hash+preprocess {base * 1e3:.2f}, "
        f"safety (batch {args.batch_size}) {cost * 1e3:.2f}; ratio {cost / base:.1f}x"
    )


if __name__ == "__main__":
    main()
