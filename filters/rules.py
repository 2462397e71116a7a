"""The paper's text rules applied to one Arrow table of stage-1 rows.

Order: normalise the caption, then URL checks, the 5..50 length rule, the
Chinese-text check (:mod:`zhclip.filters.language`), and the blacklist, each only on rows still kept, so the costly blacklist scan runs on
the fewest rows. Every row leaves as kept or as a reject with one reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
from zhclip.filters.language import not_chinese_reasons
from zhclip.filters.text import caption_length_reasons, normalize_captions
from zhclip.filters.urls import parse_networks, url_reasons
from zhclip.pipeline.core import schema as S


@dataclass
class RuleSet:
    """Settings of the text rules, built from the config's ``filters`` section."""

    min_chars: int = 5
    max_chars: int = 50
    traditional_to_simplified: bool = False
    schemes: tuple[str, ...] = ("http", "https")
    allow_networks: tuple[str, ...] = ()
    blacklist_lists: tuple[str, ...] = ("builtin",)
    blacklist_extra_files: tuple[str, ...] = ()
    require_chinese: bool = True
    max_kana_share: float = 0.2
    min_text_share: float = 0.5
    file_sources: tuple[str, ...] = ()
    """Sources whose rows may carry file:// URLs (those with image_root); others' are invalid_url."""
    _matcher: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        parse_networks(self.allow_networks)  # fail early on a bad network

    @classmethod
    def from_config(cls, filters_cfg, file_sources: tuple[str, ...] = ()) -> RuleSet:
        c = filters_cfg
        return cls(
            file_sources=tuple(file_sources),
            min_chars=c.caption.min_chars,
            max_chars=c.caption.max_chars,
            traditional_to_simplified=c.caption.traditional_to_simplified,
            schemes=tuple(c.urls.schemes),
            allow_networks=tuple(c.urls.allow_networks),
            blacklist_lists=tuple(c.blacklist.lists),
            blacklist_extra_files=tuple(c.blacklist.extra_files),
            require_chinese=c.language.require_chinese,
            max_kana_share=c.language.max_kana_share,
            min_text_share=c.language.min_text_share,
        )

    @property
    def matcher(self):
        if self._matcher is None:
            from zhclip.blacklist.loader import load_entries
            from zhclip.filters.blacklist import BlacklistMatcher

            entries = load_entries(list(self.blacklist_lists), list(self.blacklist_extra_files))
            self._matcher = BlacklistMatcher(entries)
        return self._matcher

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_matcher"] = None  # rebuilt on the worker
        return state


def _split(table: pa.Table, reasons: pa.Array, matched: pa.Array | None = None
           ) -> tuple[pa.Table, pa.Table]:
    """(rows whose reason is null, reject rows for the others); ``matched`` is
    the text that hit, row for row with ``reasons`` (blacklist only).

    Rejects are built from the four columns they keep, filtered before the
    wide table is, which keeps this off the hot path's profile.
    """
    hit = pc.is_valid(reasons)
    if not pc.any(hit).as_py():
        return table, S.empty_reject_table()
    narrow = table.select([S.KEY, S.SOURCE, S.URL, S.CAPTION]).filter(hit)
    n = narrow.num_rows
    rejected = pa.Table.from_arrays(
        [
            narrow.column(S.KEY),
            narrow.column(S.SOURCE),
            narrow.column(S.URL),
            pc.utf8_slice_codeunits(narrow.column(S.CAPTION), 0, 2000),
            reasons.filter(hit),
            pa.array(["metadata"] * n, pa.string()),
            matched.filter(hit) if matched is not None else pa.nulls(n, pa.string()),
        ],
        schema=S.REJECT_SCHEMA,
    )
    return table.filter(pc.invert(hit)), rejected


def apply_rules(table: pa.Table, rules: RuleSet) -> tuple[pa.Table, pa.Table]:
    """Normalise captions and apply URL, length and blacklist rules.

    Returns (kept rows in METADATA_SCHEMA, rejects in REJECT_SCHEMA). A row
    failing both URL and length rules is rejected for its URL.
    """
    table = table.combine_chunks()
    if table.num_rows == 0:
        return table, S.empty_reject_table()
    idx = table.schema.get_field_index(S.CAPTION)
    caption = normalize_captions(table.column(S.CAPTION), rules.traditional_to_simplified)
    table = table.set_column(idx, S.CAPTION, caption)
    # URL, length and the Chinese-text check are cheap on every row: one split for all.
    checks = [
        _file_url_reasons(table, rules.file_sources),
        url_reasons(table.column(S.URL), rules.schemes, rules.allow_networks),
        caption_length_reasons(caption, rules.min_chars, rules.max_chars),
    ]
    if rules.require_chinese:
        checks.append(not_chinese_reasons(caption, rules.max_kana_share, rules.min_text_share))
    cheap = pc.coalesce(*checks)
    table, rejected = _split(table, cheap)
    rejects = [rejected]
    if table.num_rows:
        # Match on an NFKC copy so full-width ＱＱ / １３８... spellings hit the
        # ASCII terms; the stored caption keeps its full-width punctuation.
        folded = pc.utf8_normalize(table.column(S.CAPTION), "NFKC")
        reasons = rules.matcher.match_array(folded)
        # the hit as matched, in the NFKC-folded text the matcher saw
        matched = rules.matcher.matched_texts(folded, reasons) if reasons.null_count < len(reasons) else None
        table, rej = _split(table, reasons, matched)
        rejects.append(rej)
    return table, pa.concat_tables(rejects)


def _file_url_reasons(table: pa.Table, file_sources: tuple[str, ...]) -> pa.Array:
    """``invalid_url`` for a file:// URL from a source not allowed local files, else null.

    Allowing the file scheme for a COCO folder must not let a LAION row name
    file:///etc/passwd: local paths are only trusted where zhclip built them.
    """
    from zhclip.pipeline.core.reasons import REASON_INVALID_URL

    urls = table.column(S.URL)
    is_file = pc.fill_null(pc.starts_with(pc.utf8_lower(pc.utf8_trim_whitespace(urls)), "file:"), False)
    allowed = pc.is_in(table.column(S.SOURCE), value_set=pa.array(list(file_sources), pa.string()))
    bad = pc.and_(is_file, pc.invert(pc.fill_null(allowed, False)))
    return pc.if_else(bad, pa.scalar(REASON_INVALID_URL, pa.string()), pa.scalar(None, pa.string()))
