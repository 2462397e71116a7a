"""Which score threshold each source's pairs must pass, from the config.

``score.thresholds`` keys are source kinds (``laion``) or source names
(``laion_cn``); a name wins over its kind. The paper's rule is about LAION
data, not about a source called ``laion_zh``, so the default ``{laion: 0.26}``
filters a LAION source whatever it is named. This module turns the config into
the name-keyed mapping that the pure rule
:func:`zhclip.filters.image_rules.threshold_reason` takes, plus the warnings a
run must print and report: a LAION source left without a threshold keeps
pairs the paper drops, and nobody would otherwise notice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from zhclip.pipeline.core.config import Config

LAION_KIND = "laion"
#: Source names the shipped configs and DESIGN.md use per kind. A run without
#: configured sources (scoring a bare download folder) knows no kinds, so kind
#: keys reach the samples through these names.
CONVENTIONAL_NAMES: dict[str, str] = {
    "laion": "laion_zh",
    "wukong": "wukong",
    "coco": "coco_zh",
    "visual_genome": "vg_zh",
}


@dataclass(frozen=True)
class ThresholdPlan:
    """Threshold per source name, and what the run must warn about."""

    by_source: dict[str, float]
    configured: frozenset[str] = frozenset()
    warnings: list[str] = field(default_factory=list)

    def runtime_warnings(self, seen_sources: Iterable[str]) -> list[str]:
        """Warnings that need the sources actually found in the downloads."""
        seen = set(seen_sources)
        out = list(self.warnings)
        if self.configured:
            for name in sorted(seen - self.configured - set(self.by_source)):
                out.append(
                    f"source {name!r} is in the downloads but not in the config's sources: "
                    "its kind is unknown, so no score threshold was applied to it"
                )
        else:
            for name in sorted(set(self.by_source) - seen):
                out.append(
                    f"score threshold for {name!r} matched no sample in the downloads "
                    "(no sources are configured, so thresholds match sample source names)"
                )
        return out


def source_threshold(name: str, kind: str, thresholds: Mapping[str, float]) -> float | None:
    """The source's own entry, else its kind's, else None (no threshold)."""
    if name in thresholds:
        return float(thresholds[name])
    if kind in thresholds:
        return float(thresholds[kind])
    return None


def plan_thresholds(cfg: Config) -> ThresholdPlan:
    """Resolve ``cfg.score.thresholds`` against ``cfg.sources`` (see the module doc)."""
    thresholds = cfg.score.thresholds
    if not cfg.sources:
        return _plan_without_sources(thresholds)
    by_source: dict[str, float] = {}
    warnings: list[str] = []
    for src in cfg.sources:
        value = source_threshold(src.name, src.kind, thresholds)
        if value is not None:
            by_source[src.name] = value
        elif src.kind == LAION_KIND:
            warnings.append(
                f"LAION source {src.name!r} has no score threshold: all its pairs are kept "
                "whatever their score (the paper drops LAION pairs below 0.26); set "
                f"score.thresholds.{LAION_KIND} or score.thresholds.{src.name}"
            )
    return ThresholdPlan(by_source, frozenset(s.name for s in cfg.sources), warnings)


def _plan_without_sources(thresholds: Mapping[str, float]) -> ThresholdPlan:
    by_source = {k: float(v) for k, v in thresholds.items() if k not in CONVENTIONAL_NAMES}
    mapped = []
    for kind, name in CONVENTIONAL_NAMES.items():
        if kind in thresholds and name not in thresholds:
            by_source[name] = float(thresholds[kind])
            mapped.append(f"{kind} -> {name}")
    warnings = []
    if mapped:
        warnings.append(
            "no sources are configured, so kind thresholds apply to the conventional source "
            f"names ({', '.join(mapped)}); configure `sources` so that they reach yours"
        )
    if LAION_KIND not in thresholds and CONVENTIONAL_NAMES[LAION_KIND] not in by_source:
        warnings.append(
            "no LAION score threshold is set: LAION pairs are kept whatever their score "
            "(the paper drops those below 0.26)"
        )
    return ThresholdPlan(by_source, frozenset(), warnings)
