"""Print the blacklist's recall and false-positive rate per labelled set, how many
of COCO-CN's human captions it rejects, and (--speed) its cost per 100k rows
against an earlier revision of the matcher and lists, side by side.

    python bench/blacklist_quality.py                   # tuning set with its misses,
                                                        # held-out and own set as figures
    python bench/blacklist_quality.py --show-heldout    # also list the held-out misses
    python bench/blacklist_quality.py --speed 100000 [--baseline-rev e9ed2d3] [--rounds 7]

The held-out set (tests/data/blacklist_heldout.tsv) was frozen before the lists
were tuned; its misses are hidden unless asked for, so tuning looks only at
tests/data/blacklist_tuning.tsv (and the project's own blacklist_eval.tsv).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from zhclip.blacklist.loader import available_lists
from zhclip.filters.blacklist import BlacklistMatcher
from zhclip.filters.blacklist_quality import evaluate, parse_labelled, reasons_for

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
COCO_CN = REPO.parent / "shared" / "fixtures" / "coco-cn" / "coco-cn_ext.icap2020.txt"
# The last commit with the phrase lists and matcher as they were before issue 23.
BASELINE_REV = "e9ed2d3"


def quality(matcher: BlacklistMatcher, show_heldout: bool) -> None:
    for name, show in (("blacklist_tuning.tsv", True), ("blacklist_heldout.tsv", show_heldout),
                       ("blacklist_eval.tsv", True)):
        q = evaluate(parse_labelled((DATA / name).read_text(encoding="utf-8")), matcher)
        lines = q.lines()
        print(f"== {name}")
        print("\n".join(lines if show else [ln for ln in lines if not ln.startswith("  ")]))
    if COCO_CN.is_file():
        caps = [ln.split("\t", 1)[1].strip()
                for ln in COCO_CN.read_text(encoding="utf-8").splitlines() if "\t" in ln]
        rejected = [(c, r) for c, r in zip(caps, reasons_for(caps, matcher), strict=True) if r]
        print(f"== COCO-CN human captions rejected: {len(rejected)} of {len(caps)}")
        for c, r in rejected:
            print(f"  {r}  {c}")
    else:
        print(f"== COCO-CN fixture not found at {COCO_CN}: skipped")


def baseline_matcher(rev: str, tmp: Path):
    """The matcher code and shipped lists of ``rev``, loaded beside today's."""
    def show(path: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{path}"],
                              check=True, capture_output=True, text=True).stdout

    names = [n[:-4] for n in show("blacklist/lists/").split() if n.endswith(".txt")]
    files = []
    for name in names:
        (tmp / f"{name}.txt").write_text(show(f"blacklist/lists/{name}.txt"), encoding="utf-8")
        files.append(str(tmp / f"{name}.txt"))
    module_path = tmp / "baseline_blacklist.py"
    module_path.write_text(show("filters/blacklist.py"), encoding="utf-8")
    spec = importlib.util.spec_from_file_location("baseline_blacklist", module_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.BlacklistMatcher.from_lists([], files)


def speed(rows: int, rounds: int, rev: str) -> None:
    sys.path.insert(0, str(REPO / "bench"))
    from metadata import make_input  # the captions stage 1's benchmark uses

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_input(tmp / "in.parquet", rows)
        captions = pq.read_table(tmp / "in.parquet", columns=["TEXT"]).column("TEXT")
        captions = pc.utf8_normalize(captions.combine_chunks(), "NFKC")
        old = baseline_matcher(rev, tmp)
        new = BlacklistMatcher.from_lists()
        wall: dict[str, list[float]] = {"before": [], "after": []}
        cpu: dict[str, list[float]] = {"before": [], "after": []}
        for matcher in (old, new):
            matcher.match_array(pa.array(["预热一下匹配器"]))
        for _ in range(rounds):  # alternate, so load from elsewhere hits both alike
            for label, matcher in (("before", old), ("after", new)):
                started, started_cpu = time.perf_counter(), time.process_time()
                reasons = matcher.match_array(captions)
                wall[label].append(time.perf_counter() - started)
                cpu[label].append(time.process_time() - started_cpu)
                rejected = len(reasons) - reasons.null_count
        for label, matcher in (("before", old), ("after", new)):
            print(f"{label:<6} {len(matcher):>4} entries: {min(wall[label]) / rows * 1e5:.3f} s per 100k "
                  f"rows, {min(cpu[label]) / rows * 1e5:.3f} s CPU (best of {rounds})")
        # CPU time is the steadier figure on a shared machine (polars' threads count in it)
        print(f"ratio after/before: {min(wall['after']) / min(wall['before']):.2f} wall, "
              f"{min(cpu['after']) / min(cpu['before']):.2f} CPU "
              f"(rows {rows:,}, {rejected:,} rejected after; before = {rev})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lists", nargs="+", default=["builtin"], choices=["builtin", *available_lists()])
    ap.add_argument("--show-heldout", action="store_true", help="list the held-out misses too")
    ap.add_argument("--speed", type=int, metavar="ROWS", help="time the matcher instead")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--baseline-rev", default=BASELINE_REV)
    args = ap.parse_args()
    if args.speed:
        speed(args.speed, args.rounds, args.baseline_rev)
    else:
        quality(BlacklistMatcher.from_lists(args.lists), args.show_heldout)


if __name__ == "__main__":
    main()
