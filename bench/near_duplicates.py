"""Print the near-duplicate rule's pair precision and recall on the labelled set
of wheel photographs (:mod:`zhclip.filters.near_duplicate_pairs`), the grey-level
hash alone beside the hash plus colour signature, at several hash distances.

    python bench/near_duplicates.py [--bits 0 4 6 8 10 12]
"""

from __future__ import annotations

import argparse
import time

from zhclip.filters import near_duplicate_pairs as NP


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", type=int, nargs="+", default=[0, 4, 6, 8, 10, 12])
    args = ap.parse_args()
    started = time.perf_counter()
    pairs = NP.pair_set()
    same = sum(p.same for p in pairs)
    recol = sum(p.kind in NP.RECOLOURED for p in pairs)
    print(
        f"pairs: {len(pairs)} ({same} same picture, {recol} colour variants, "
        f"{len(pairs) - same - recol} different photos); built in {time.perf_counter() - started:.1f}s"
    )
    print(f"{'rule':<22}{'bits':>5}{'precision':>11}{'recall':>8}  misses / false merges")
    for bits in args.bits:
        for colour in (False, True):
            q = NP.evaluate(pairs, bits, colour=colour)
            name = "phash + colour" if colour else "phash (grey) alone"
            print(
                f"{name:<22}{bits:>5}{q.precision:>11.3f}{q.recall:>8.3f}  "
                f"{dict(sorted(q.misses.items()))} / {dict(sorted(q.false_merges.items()))}"
            )
    print(f"seconds: {time.perf_counter() - started:.1f}")


if __name__ == "__main__":
    main()
