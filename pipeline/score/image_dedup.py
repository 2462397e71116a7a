"""Stage 3's image dedup as Beam transforms: identical bytes, then near-identical pixels.

Both keep the smallest key of a group and reject the others with a reason, so
the result does not depend on the runner or on arrival order. They work on
index entries (key, source, caption, split, phash, colour signature), never on
pixels. Near-identical means a close perceptual hash *and* the same coarse
colours (:mod:`zhclip.filters.near_duplicates`), so colour variants of one
layout stay apart.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from zhclip.filters import image_rules
from zhclip.pipeline.core import reasons as RS
from zhclip.pipeline.core import report as R
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.core.tags import TAG_COUNTS as COUNTS
from zhclip.pipeline.core.tags import TAG_REJECTS as REJECTS
from zhclip.pipeline.score.steps import COLOUR, PHASH, STAGE


def index_entry(rec: dict[str, Any]) -> dict[str, Any]:
    """What dedup and ranking need of a record: no pixels."""
    return {k: rec.get(k) for k in (S.KEY, S.SOURCE, S.URL, S.CAPTION, S.SPLIT, PHASH, COLOUR)}


def _lose(loser: dict[str, Any], reason: str, kept: str | None = None) -> Iterator[Any]:
    """Reject ``loser``; ``matched`` names the smaller key it copies (in a chain
    a~b~c, c may name b, itself a loser)."""
    yield beam.pvalue.TaggedOutput(REJECTS, {
        S.KEY: loser[S.KEY], S.SOURCE: loser[S.SOURCE], S.URL: loser[S.URL],
        S.CAPTION: loser[S.CAPTION], S.REASON: reason, S.STAGE: STAGE,
        S.MATCHED: None if kept is None else f"copy of {kept}",
    })
    yield beam.pvalue.TaggedOutput(COUNTS, R.counts(loser[S.SOURCE], reasons={reason: 1}))


def pick_sha_winner(element: tuple[str, list[dict[str, Any]]],
                    reason: str = RS.REASON_DUPLICATE_IMAGE) -> Iterator[Any]:
    """Keep the smallest key of a group of identical images; reject the others."""
    _, entries = element
    entries = sorted(entries, key=lambda e: e[S.KEY])
    yield entries[0]
    for loser in entries[1:]:
        yield from _lose(loser, reason, entries[0][S.KEY])


def pick_exact_winners(element: tuple[str, list[dict[str, Any]]]) -> Iterator[Any]:
    """One equal-hash group: an entry loses to a smaller key of the same colours;
    colour variants of one layout share the hash and all survive."""
    _, entries = element
    entries = sorted(entries, key=lambda e: e[S.KEY])
    lost = image_rules.near_duplicate_matches([(e[S.KEY], e[PHASH], e.get(COLOUR)) for e in entries], 0)
    for entry in entries:
        if entry[S.KEY] in lost:
            yield from _lose(entry, RS.REASON_NEAR_DUPLICATE_IMAGE, lost[entry[S.KEY]])
        else:
            yield entry


def _band_candidates(entry: dict[str, Any], max_distance: int,
                     caption_sources: frozenset[str]) -> Iterator[tuple[Any, tuple]]:
    """(band group key, (key, phash, colour)) for each band of the entry's hash."""
    group = image_rules.image_dedup_key("", entry[S.SOURCE], entry[S.CAPTION], caption_sources)
    for band in image_rules.band_keys(entry[PHASH], max_distance):
        yield (band, group), (entry[S.KEY], entry[PHASH], entry.get(COLOUR))


def _band_losers(element: tuple[Any, list[tuple]], max_distance: int) -> Iterator[tuple[str, str]]:
    _, members = element
    if len(members) > 1:
        yield from image_rules.near_duplicate_matches(list(members), max_distance).items()


def _resolve_near(element: tuple[str, dict[str, list[Any]]]) -> Iterator[Any]:
    _, joined = element
    entries, lost = list(joined["entry"]), list(joined["lost"])
    for entry in entries:
        if lost:  # several bands may each find a match: the smallest is named, on any runner
            yield from _lose(entry, RS.REASON_NEAR_DUPLICATE_IMAGE, min(lost))
        else:
            yield entry


class DedupNearImages(beam.PTransform):
    """Index entries -> the entries that survive near-duplicate removal (main), rejects, counts.

    Exact mode (distance 0) groups by the 64-bit perceptual hash through one
    shuffle; in a group, an entry loses to a smaller key of the same colours. With distance
    k > 0 each hash is shuffled under its k + 1 bands; an entry loses when a
    band neighbour with a smaller key lies within k bits (one more shuffle joins
    the verdicts back to the entries). ``dedup: url_caption`` sources group by
    caption too, so their several captions of one image stay distinct pairs.
    """

    def __init__(self, max_distance: int, caption_sources: frozenset[str]) -> None:
        super().__init__()
        self._k = max_distance
        self._caption_sources = caption_sources

    def expand(self, index):
        k, cs = self._k, self._caption_sources
        if k == 0:
            return (
                index
                | "ByPhash" >> beam.Map(lambda e: (image_rules.near_duplicate_key(
                    e[PHASH], e[S.SOURCE], e[S.CAPTION], cs), e))
                | "GroupPhash" >> beam.GroupByKey()
                | "PickNearWinner" >> beam.FlatMap(pick_exact_winners).with_outputs(
                    REJECTS, COUNTS, main="winners")
            )
        lost = (
            index
            | "Bands" >> beam.FlatMap(_band_candidates, max_distance=k, caption_sources=cs)
            | "GroupBand" >> beam.GroupByKey()
            | "BandLosers" >> beam.FlatMap(_band_losers, max_distance=k)
        )
        return (
            {"entry": index | "EntryByKey" >> beam.Map(lambda e: (e[S.KEY], e)), "lost": lost}
            | "JoinVerdict" >> beam.CoGroupByKey()
            | "Resolve" >> beam.FlatMap(_resolve_near).with_outputs(REJECTS, COUNTS, main="winners")
        )


class DedupExactImages(beam.PTransform):
    """Records -> index entries of one record per identical image (main), rejects, counts.

    Groups by sha256 of the image bytes (with the caption too for
    ``dedup: url_caption`` sources, whose captions of one image are distinct pairs).
    """

    def __init__(self, caption_sources: frozenset[str]) -> None:
        super().__init__()
        self._caption_sources = caption_sources

    def expand(self, records):
        cs = self._caption_sources
        return (
            records
            | "BySha256" >> beam.Map(lambda r: (image_rules.image_dedup_key(
                r[S.SHA256], r[S.SOURCE], r[S.CAPTION], cs), index_entry(r)))
            | "GroupSha256" >> beam.GroupByKey()
            | "PickWinner" >> beam.FlatMap(pick_sha_winner).with_outputs(REJECTS, COUNTS, main="winners")
        )
