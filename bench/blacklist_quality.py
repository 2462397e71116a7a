"""Print the blacklist's precision and recall per list on the labelled set,
and how many of COCO-CN's human captions it rejects.

    python bench/blacklist_quality.py [--eval tests/data/blacklist_eval.tsv]
        [--coco-cn ../shared/fixtures/coco-cn/coco-cn_ext.icap2020.txt] [--lists builtin]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from zhclip.filters.blacklist import BlacklistMatcher
from zhclip.filters.blacklist_quality import evaluate, parse_labelled, reasons_for

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval", default=str(REPO / "tests" / "data" / "blacklist_eval.tsv"))
    ap.add_argument("--coco-cn", default=str(REPO.parent / "shared" / "fixtures" / "coco-cn"
                                             / "coco-cn_ext.icap2020.txt"))
    ap.add_argument("--lists", nargs="+", default=["builtin"])
    args = ap.parse_args()
    matcher = BlacklistMatcher.from_lists(args.lists)
    started = time.perf_counter()
    q = evaluate(parse_labelled(Path(args.eval).read_text(encoding="utf-8")), matcher)
    print("\n".join(q.lines()))
    coco = Path(args.coco_cn)
    if coco.is_file():
        caps = [ln.split("\t", 1)[1].strip() for ln in coco.read_text(encoding="utf-8").splitlines() if "\t" in ln]
        rejected = [(c, r) for c, r in zip(caps, reasons_for(caps, matcher), strict=True) if r]
        print(f"COCO-CN human captions rejected: {len(rejected)} of {len(caps)} ({len(rejected) / len(caps):.3%})")
        for c, r in rejected:
            print(f"  {r}  {c}")
    else:
        print(f"COCO-CN fixture not found at {coco}: skipped")
    print(f"seconds: {time.perf_counter() - started:.2f}")


if __name__ == "__main__":
    main()
