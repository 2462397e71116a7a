"""`zhclip shards stats`: what a shard folder holds, from its sidecars.

Everything stats reports (source, caption, score, image size, key) is in the
parquet sidecars, so it reads those (kilobytes per shard) and not the tars;
a shard whose sidecar is missing or unreadable is read from its tar instead,
and named. Accumulators are fixed-size histograms and counters, so memory
does not grow with the number of shards.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.shards import reader as src
from zhclip.pipeline.shards.duplicates import DuplicateKeyFinder, confirm_duplicates
from zhclip.pipeline.shards.reader import expected_samples, iter_shard_columns

CAPTION_BINS = 60  # one bin per character length 0..59, the last also holds longer captions
SCORE_RANGE = (-0.2, 0.6)
SCORE_BINS = 40
TOP_SIZES = 10
MAX_DISTINCT_SIZES = 10_000  # beyond this, rare sizes are folded into "other"


@dataclass
class FolderStats:
    """Accumulated statistics; :meth:`to_json` is what ``stats --json`` prints."""

    samples: int = 0
    shards: int = 0
    by_source: Counter[str] = field(default_factory=Counter)
    caption_hist: np.ndarray = field(default_factory=lambda: np.zeros(CAPTION_BINS, dtype=np.int64))
    caption_missing: int = 0
    caption_min: int | None = None
    caption_max: int | None = None
    caption_sum: int = 0
    score_hist: np.ndarray = field(default_factory=lambda: np.zeros(SCORE_BINS + 2, dtype=np.int64))
    score_missing: int = 0
    score_sum: float = 0.0
    sizes: Counter[str] = field(default_factory=Counter)
    sizes_other: int = 0
    duplicate_keys: dict[str, int] = field(default_factory=dict)

    def add_columns(self, keys: list[str], sources: list[Any], captions: list[Any],
                    scores: list[Any], widths: list[Any], heights: list[Any]) -> None:
        self.samples += len(keys)
        self.by_source.update(str(s) if s is not None else "unknown" for s in sources)
        lengths = np.array([len(c) for c in captions if c is not None], dtype=np.int64)
        self.caption_missing += sum(1 for c in captions if c is None)
        if lengths.size:
            self.caption_hist += np.bincount(np.minimum(lengths, CAPTION_BINS - 1), minlength=CAPTION_BINS)
            lo, hi = int(lengths.min()), int(lengths.max())
            self.caption_min = lo if self.caption_min is None else min(self.caption_min, lo)
            self.caption_max = hi if self.caption_max is None else max(self.caption_max, hi)
            self.caption_sum += int(lengths.sum())
        vals = np.array([s for s in scores if s is not None], dtype=np.float64)
        self.score_missing += len(scores) - vals.size
        if vals.size:
            self.score_hist += score_bin_counts(vals)
            self.score_sum += float(vals.sum())
        for w, h in zip(widths, heights, strict=True):
            size = f"{w}x{h}" if w is not None and h is not None else "unknown"
            if size in self.sizes or len(self.sizes) < MAX_DISTINCT_SIZES:
                self.sizes[size] += 1
            else:
                self.sizes_other += 1

    def to_json(self) -> dict[str, Any]:
        edges = score_bin_edges()
        with_caption = self.samples - self.caption_missing
        with_score = self.samples - self.score_missing
        return {
            "samples": self.samples,
            "shards": self.shards,
            "by_source": dict(sorted(self.by_source.items(), key=lambda kv: (-kv[1], kv[0]))),
            "caption_length": {
                "min": self.caption_min, "max": self.caption_max,
                "mean": round(self.caption_sum / with_caption, 3) if with_caption else None,
                "missing": self.caption_missing,
                "histogram": {"bins": [str(i) for i in range(CAPTION_BINS - 1)] + [f"{CAPTION_BINS - 1}+"],
                              "counts": self.caption_hist.tolist()},
            },
            "score": {
                "mean": round(self.score_sum / with_score, 6) if with_score else None,
                "missing": self.score_missing,
                "histogram": {"bin_edges": [round(e, 4) for e in edges],
                              "below": int(self.score_hist[0]), "above": int(self.score_hist[-1]),
                              "counts": self.score_hist[1:-1].tolist()},
            },
            "image_sizes": {
                "top": dict(self.sizes.most_common(TOP_SIZES)),
                "distinct": len(self.sizes) + (1 if self.sizes_other else 0),
                "other": sum(self.sizes.values()) - sum(n for _, n in self.sizes.most_common(TOP_SIZES))
                + self.sizes_other,
            },
            "duplicate_keys": self.duplicate_keys,
        }


def score_bin_edges() -> list[float]:
    lo, hi = SCORE_RANGE
    return [lo + i * (hi - lo) / SCORE_BINS for i in range(SCORE_BINS + 1)]


def score_bin_counts(values: np.ndarray) -> np.ndarray:
    """Counts with one underflow bin first and one overflow bin last."""
    lo, hi = SCORE_RANGE
    idx = np.floor((values - lo) / (hi - lo) * SCORE_BINS).astype(np.int64) + 1
    idx = np.clip(idx, 0, SCORE_BINS + 1)
    idx[values == hi] = SCORE_BINS  # the top edge belongs to the last bin
    return np.bincount(idx, minlength=SCORE_BINS + 2)


def folder_stats(folder: src.ShardFolder, problems: list[str], progress: bool = False) -> FolderStats:
    """One pass over the sidecars, plus a second over keys only if a key may repeat."""
    stats = FolderStats()
    dups = DuplicateKeyFinder(expected_samples(folder))
    for cols in iter_shard_columns(folder, problems, progress):
        stats.shards += 1
        keys = [str(k) for k in cols[S.KEY]]
        dups.add_many(keys)
        stats.add_columns(keys, cols[S.SOURCE], cols[S.CAPTION], cols[S.SCORE], cols[S.WIDTH], cols[S.HEIGHT])
    if dups.candidates:
        ignored: list[str] = []  # already reported in the first pass
        all_keys = (str(k) for cols in iter_shard_columns(folder, ignored) for k in cols[S.KEY])
        stats.duplicate_keys = confirm_duplicates(dups.candidates, all_keys)
    return stats


def format_stats(stats: dict[str, Any], folder: src.ShardFolder) -> str:
    """Human-readable stats: counts, and histograms as text bars."""
    lines = [f"{folder.uri} ({folder.kind}): {stats['samples']} samples in {stats['shards']} shards", "",
             "samples by source:"]
    for name, n in stats["by_source"].items():
        lines.append(f"  {name:<20} {n:>10}  {100 * n / max(1, stats['samples']):5.1f}%")
    cap = stats["caption_length"]
    lines += ["", f"caption length (chars): min {cap['min']}  max {cap['max']}  mean {cap['mean']}"
              f"  missing {cap['missing']}"]
    lines += _text_hist(cap["histogram"]["bins"], cap["histogram"]["counts"])
    sc = stats["score"]
    lines += ["", f"score: mean {sc['mean']}  missing {sc['missing']}  below {sc['histogram']['below']}"
              f"  above {sc['histogram']['above']}"]
    edges = sc["histogram"]["bin_edges"]
    lines += _text_hist([f"{edges[i]:+.2f}" for i in range(len(edges) - 1)], sc["histogram"]["counts"])
    lines += ["", f"image sizes ({stats['image_sizes']['distinct']} distinct):"]
    for size, n in stats["image_sizes"]["top"].items():
        lines.append(f"  {size:<12} {n:>10}")
    if stats["image_sizes"]["other"]:
        lines.append(f"  {'other':<12} {stats['image_sizes']['other']:>10}")
    dup = stats["duplicate_keys"]
    lines += ["", f"duplicate keys: {len(dup)}" + ("" if not dup else "  (" + ", ".join(
        f"{k} x{n}" for k, n in list(dup.items())[:10]) + (" ..." if len(dup) > 10 else "") + ")")]
    return "\n".join(lines)


def _text_hist(labels: list[str], counts: list[int], width: int = 40) -> list[str]:
    """Rows from the first to the last non-empty bin, each with a bar scaled to the largest."""
    nonzero = [i for i, n in enumerate(counts) if n]
    if not nonzero:
        return ["  (no values)"]
    top = max(counts)
    return [f"  {labels[i]:>6} {counts[i]:>9} {'#' * max(1 if counts[i] else 0, round(width * counts[i] / top))}"
            for i in range(nonzero[0], nonzero[-1] + 1)]
