"""What open_clip's caption cleaning (ftfy: full-width punctuation folded to ASCII) costs.

    python bench/open_clip_folding.py --captions /work/shared/fixtures/coco-cn/coco-cn_ext.icap2020.txt
    python bench/open_clip_folding.py --model runs/vitb16/export.pt --data datasets/Flickr30k-CN --split test

``--captions FILE`` (one caption a line, or COCO-CN's ``id<TAB>caption``): how many
captions the cleaning changes and which characters it folds. ``--model`` and
``--data`` (any benchmark `zhclip eval` reads): recall side by side, with zhclip's
tokenization (the baseline, what `zhclip eval` reports) and with the captions
cleaned first as open_clip's tokenizer does (what CLIP_benchmark or any open_clip
user gets from the open_clip export); the ratio is cleaned / baseline mean recall.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path


def read_captions(path: Path) -> list[str]:
    lines = [ln.rstrip("\n") for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return [ln.split("\t", 1)[1] if "\t" in ln else ln for ln in lines]


def change_report(captions: list[str]) -> None:
    from open_clip.tokenizer import get_clean_fn
    from zhclip.training.export_open_clip import cleaning_changes

    changed = cleaning_changes(captions)
    clean = get_clean_fn("whitespace")
    folded: collections.Counter[str] = collections.Counter()
    for caption, hit in zip(captions, changed, strict=True):
        if hit:
            folded.update(set(caption) - set(clean(caption)))
    n = sum(changed)
    print(
        f"captions: {len(captions)}; changed by open_clip's cleaning: {n} "
        f"({100.0 * n / max(1, len(captions)):.1f}%)"
    )
    print(
        "characters folded (captions containing them):",
        ", ".join(f"{ch!r} {k}" for ch, k in folded.most_common(8)),
    )


def recall_report(model_path: str, data: str, split: str | None, batch_size: int) -> None:
    from open_clip.tokenizer import get_clean_fn
    from zhclip.training.benchmarks import read_retrieval
    from zhclip.training.evaluate import embed_captions, embed_image_stream, retrieval_metrics
    from zhclip.training.export import load_export

    bench = read_retrieval(data, "auto", split)
    model, tokenizer, transform = load_export(model_path)
    images = embed_image_stream(model, transform, bench.read_images(), batch_size=batch_size)
    clean = get_clean_fn("whitespace")
    rows = {}
    for name, texts in (
        ("zhclip tokenizer", bench.texts),
        ("open_clip cleaning", [clean(t) for t in bench.texts]),
    ):
        feats = embed_captions(model, tokenizer, texts, batch_size=batch_size)
        rows[name] = retrieval_metrics(images, feats, bench.text_to_images)
    keys = ["t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10", "mean_recall"]
    print(f"{'':20s}" + "".join(f"{k:>12s}" for k in keys))
    for name, m in rows.items():
        print(f"{name:20s}" + "".join(f"{m[k]:12.2f}" for k in keys))
    base = rows["zhclip tokenizer"]["mean_recall"]
    ratio = rows["open_clip cleaning"]["mean_recall"] / base if base else float("nan")
    print(f"ratio (cleaned / baseline mean recall): {ratio:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=Path, help="caption file to count changes on")
    parser.add_argument("--model", help="a zhclip export, for the recall comparison")
    parser.add_argument("--data", help="a retrieval benchmark folder")
    parser.add_argument("--split")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    if not args.captions and not (args.model and args.data):
        parser.error("give --captions, or --model and --data")
    if args.captions:
        change_report(read_captions(args.captions))
    if args.model and args.data:
        recall_report(args.model, args.data, args.split, args.batch_size)


if __name__ == "__main__":
    main()
