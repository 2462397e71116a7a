"""Find captions that hit a blacklist entry, a whole Arrow column at a time.

Stage 1 screens millions of captions, so nearly all work is vectorised and only
captions holding a ``word:`` term reach Python:

1. Candidate rows: one RE2 pass (``pyarrow.compute.match_substring_regex``)
   over an alternation of screening strings: every literal term, and for each
   regex entry the strings one of which its every match must hold
   (``required_literals``: ``点击|长按`` for ``(?:点击|长按)\\s*(?:查看|打开)``). Only
   the few regexes without such strings join the alternation as regexes:
   RE2's DFA would run out of memory on hundreds of rich rules at once.
2. Which entries hit, on candidate rows only: polars' Aho-Corasick
   ``str.find_many`` / ``str.extract_many`` list every literal occurrence with
   its byte offset, including the screening strings, which name the regexes to
   try on each row; each such regex then runs once, on its rows only.
   Unscreened regexes are narrowed down a tree of smaller RE2 alternations,
   and a regex hit's offset is extracted only where a row has more than one hit.
3. A word entry counts only where jieba (HMM off, so the dictionary alone
   decides) makes the occurrence one whole token. jieba runs only on rows
   where such an occurrence would beat every other hit of the row.

The reason is ``blacklist:<list>:<term>`` (for a regex, ``<term>`` is the
entry's short name) of the hit starting earliest in the caption; hits starting at the same offset go to the entry listed first.

RE2 is the only regex engine here (Python's ``re`` only validates patterns and reads
their syntax trees for the screening strings), so ``match_one`` and ``match_array`` agree:
``match_one`` is ``match_array`` on a column of one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from zhclip.blacklist.loader import BlacklistEntry, load_entries
from zhclip.filters.blacklist_hits import NO_ENTRY, Hits, first_per_row, scatter
from zhclip.filters.blacklist_patterns import (
    ascii_lower,
    case_variants,
    literal_alternatives,
    minimal_strings,
    re2_literal,
    required_literals,
    without_captures,
)
from zhclip.filters.jieba_words import jieba_words
from zhclip.pipeline.core.reasons import blacklist_reason

# Entries per node of the tree that tells which regex entry hit a row; each
# node is one RE2 pass over the rows its parent passed on.
_REGEX_FANOUT = 3
# Most literals folded into the single RE2 candidate pass.
_RE2_MAX_LITERALS = 1000
# A regex made of at most this many literals is matched as those literals.
_LITERAL_REGEX_LIMIT = 16


class BlacklistMatcher:
    """Blacklist reasons for captions; see the module docstring for how.

    Picklable and cheap to ship (Beam sends it to workers): only the entries
    travel; jieba is loaded on first need in each process, once per process.
    """

    def __init__(self, entries: Sequence[BlacklistEntry]) -> None:
        self._setup(tuple(entries))

    @classmethod
    def from_lists(
        cls, lists: Sequence[str] = ("builtin",), extra_files: Sequence[str] = ()
    ) -> BlacklistMatcher:
        """Matcher over :func:`blacklist.loader.load_entries` of the same arguments."""
        return cls(load_entries(lists, extra_files))

    @classmethod
    def from_config(cls, config: Any) -> BlacklistMatcher:
        """Matcher for a ``BlacklistConfig`` (``filters.blacklist`` of the run config)."""
        return cls.from_lists(list(config.lists), list(config.extra_files))

    @property
    def entries(self) -> tuple[BlacklistEntry, ...]:
        return self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        names = list(dict.fromkeys(e.list_name for e in self._entries))
        return f"BlacklistMatcher({len(self._entries)} entries from {names})"

    def __getstate__(self) -> dict[str, Any]:
        return {"entries": self._entries}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._setup(tuple(state["entries"]))

    def _setup(self, entries: tuple[BlacklistEntry, ...]) -> None:
        self._entries = entries
        self._reasons = pa.array(
            [blacklist_reason(e.list_name, e.label) for e in entries], type=pa.string()
        )
        # Literal terms, folded as polars folds them. A term shared by several
        # entries keeps its first substring entry and, when listed before
        # that, its first word entry: later ones can never win a tie.
        first_substring: dict[str, int] = {}
        first_word: dict[str, int] = {}
        regex_ids = []
        for entry_id, entry in enumerate(entries):
            if entry.kind == "substring":
                first_substring.setdefault(ascii_lower(entry.term), entry_id)
            elif entry.kind == "word":
                first_word.setdefault(ascii_lower(entry.term), entry_id)
            elif (alternatives := literal_alternatives(entry.term)) is not None and len(
                alternatives
            ) <= _LITERAL_REGEX_LIMIT:
                # A regex that is only a few literals ("(?:联系|咨询)电话")
                # is found by the Aho-Corasick pass, which is cheaper than RE2.
                for literal in alternatives:
                    first_substring.setdefault(ascii_lower(literal), entry_id)
            else:
                regex_ids.append(entry_id)
        self._regex_ids = regex_ids
        self._regex_bodies = {i: without_captures(entries[i].term) for i in regex_ids}
        # Each regex is screened by strings one of which its every match holds
        # (required_literals); a regex with none is run on every candidate row.
        screened: dict[int, list[str]] = {}
        self._untriggered: list[int] = []
        for i in regex_ids:
            found = case_variants(required_literals(self._regex_bodies[i]))
            if found is None:
                self._untriggered.append(i)
            else:
                screened[i] = found
        # A regex's strings that hold another of its strings add nothing. (Not
        # across regexes: "_19" of a date rule must not become "1" of another.)
        triggers: dict[str, list[int]] = {}
        for i, found in screened.items():
            for literal in minimal_strings(found):
                triggers.setdefault(literal, []).append(i)
        self._literals = sorted(first_substring.keys() | first_word.keys() | triggers.keys())
        self._literal_substring_id = np.array(
            [first_substring.get(t, NO_ENTRY) for t in self._literals], dtype=np.int64
        )
        self._literal_word_id = np.array(
            [
                w if (w := first_word.get(t, NO_ENTRY)) < first_substring.get(t, NO_ENTRY) else NO_ENTRY
                for t in self._literals
            ],
            dtype=np.int64,
        )
        # literal index -> regex ids it screens, as (index, regex id) pairs
        pairs = [(k, i) for k, t in enumerate(self._literals) for i in triggers.get(t, ())]
        self._trigger_literal = np.array([k for k, _ in pairs], dtype=np.int64)
        self._trigger_regex = np.array([i for _, i in pairs], dtype=np.int64)
        self._literal_array = pa.array(self._literals, type=pa.string())
        # The candidate pass needs only the strings that hold no other one.
        self._screen = minimal_strings(self._literals)
        parts = [re2_literal(t) for t in self._screen] + [
            f"(?:{self._regex_bodies[i]})" for i in self._untriggered
        ]
        # RE2's DFA runs out of memory on alternations of many thousand
        # literals, or of many rich regexes, and crawls; Aho-Corasick does not mind.
        small = len(self._screen) <= _RE2_MAX_LITERALS
        self._any_pattern: str | None = "|".join(parts) if parts and small else None

    # ---------------------------------------------------------------- public

    def match_one(self, caption: str | None) -> str | None:
        """Reason for one caption, or None when it is clean (or None itself).

        The column code on a column of one (about 2 ms), so the answer is the
        one ``match_array`` gives; use ``match_array`` for many captions.
        """
        if caption is None:
            return None
        return self.match_array(pa.array([caption], type=pa.large_string()))[0].as_py()

    def match_array(self, captions: pa.Array | pa.ChunkedArray) -> pa.Array:
        """Reasons for a column of captions: a string array of the same length,
        null where the caption is clean or null."""
        array = _as_string_array(captions)
        n = len(array)
        if n == 0 or not self._entries or array.null_count == n:
            return pa.nulls(n, type=pa.string())
        candidates = np.flatnonzero(self._any_hit(array))
        if len(candidates) == 0:
            return pa.nulls(n, type=pa.string())
        texts = array.take(pa.array(candidates))
        literal_hits, triggered = self._literal_hits(texts)
        hits = Hits.concat(literal_hits, self._regex_hits(texts, triggered))
        best = self._best_per_row(texts, hits, len(candidates))
        found = best != NO_ENTRY
        return scatter(self._reasons.take(pa.array(best[found])), candidates[found], n)

    def matched_texts(self, captions: pa.Array | pa.ChunkedArray,
                      reasons: pa.Array | pa.ChunkedArray) -> pa.Array:
        """The text that ``reasons[i]``'s entry matched in ``captions[i]``.

        Only rejected rows are searched again, one RE2 pass per entry that won
        somewhere, so a reader of the rejects sees *what* hit, not only which
        rule. Null where the reason is null or not one of this matcher's.
        """
        array = _as_string_array(captions)
        if isinstance(reasons, pa.ChunkedArray):
            reasons = reasons.combine_chunks()
        n = len(array)
        entry_of = {}
        for entry_id, reason in enumerate(self._reasons.to_pylist()):
            entry_of.setdefault(reason, entry_id)
        ids = np.array([entry_of.get(r, NO_ENTRY) if r is not None else NO_ENTRY
                        for r in reasons.to_pylist()], dtype=np.int64)
        rows_out, texts_out = [], []
        for entry_id in np.unique(ids[ids != NO_ENTRY]):
            rows = np.flatnonzero(ids == entry_id)
            entry = self._entries[int(entry_id)]
            # a literal-only regex is matched as literals, so it has no kept body
            body = (without_captures(entry.term) if entry.kind == "regex"
                    else re2_literal(entry.term))
            found = pc.extract_regex(array.take(pa.array(rows)), pattern=f"(?i)(?P<m>{body})")
            rows_out.append(rows)
            texts_out.append(found.field("m").cast(pa.string()))
        if not rows_out:
            return pa.nulls(n, type=pa.string())
        return scatter(pa.concat_arrays(texts_out), np.concatenate(rows_out), n)

    # ------------------------------------------------------ candidate rows

    def _any_hit(self, array: pa.Array) -> np.ndarray:
        """Rows that may hit anything: one RE2 pass over literals and regexes.

        RE2 folds case beyond ASCII, so this is a superset of the rows the
        per-kind passes below confirm; it is used because one RE2 DFA pass
        over the whole column costs about what either kind alone costs.
        """
        if self._any_pattern is not None:
            try:
                return _regex_mask(array, self._any_pattern)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                # Too large for RE2 (user lists of many thousand terms).
                self._any_pattern = None
        return self._literal_candidates(array) | self._regex_candidates(array)

    def _literal_candidates(self, array: pa.Array) -> np.ndarray:
        if not self._screen:
            return np.zeros(len(array), dtype=bool)
        hits = _polars(array).str.contains_any(self._screen, ascii_case_insensitive=True)
        return hits.fill_null(False).to_numpy()

    def _regex_candidates(self, array: pa.Array) -> np.ndarray:
        if not self._untriggered:
            return np.zeros(len(array), dtype=bool)
        return _regex_mask(array, self._alternation(self._untriggered))

    # ------------------------------------------------------------ hit tables

    def _literal_hits(self, texts: pa.Array) -> tuple[Hits, tuple[np.ndarray, np.ndarray]]:
        """Every literal occurrence in ``texts``: (row, byte offset, entry) hits of
        the literal entries, and the (row, regex id) pairs whose regex a
        screening string of the row calls for."""
        none = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
        if not self._literals or len(texts) == 0:
            return Hits.empty(), none
        series = _polars(texts)
        starts = series.str.find_many(self._literals, ascii_case_insensitive=True, overlapping=True)
        matched = series.str.extract_many(self._literals, ascii_case_insensitive=True, overlapping=True)
        per_row = starts.list.len().fill_null(0).to_numpy()
        offsets = starts.explode().drop_nulls().to_numpy().astype(np.int64)
        # extract_many returns the caption's own text, so fold it like the terms.
        terms = pc.ascii_lower(matched.explode().drop_nulls().to_arrow())
        term_index = pc.index_in(terms, value_set=self._literal_array)
        if term_index.null_count or len(term_index) != len(offsets):
            raise RuntimeError("polars find_many and extract_many disagree on the literal hits")
        term_index = term_index.to_numpy(zero_copy_only=False)
        row_of = np.repeat(np.arange(len(texts), dtype=np.int64), per_row)
        hits = Hits(
            rows=np.concatenate([row_of, row_of]),
            starts=np.concatenate([offsets, offsets]),
            entries=np.concatenate(
                [self._literal_substring_id[term_index], self._literal_word_id[term_index]]
            ),
            words=np.concatenate([np.zeros(len(row_of), bool), np.ones(len(row_of), bool)]),
        ).without_missing_entries()
        return hits, self._triggered(row_of, term_index)

    def _triggered(self, rows: np.ndarray, term_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unique (row, regex id) pairs called for by the literal hits (rows, term_index)."""
        if len(self._trigger_literal) == 0 or len(rows) == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        n_literals = len(self._literals)
        # pairs sorted by literal index, so each literal's regex ids form one slice
        order = np.argsort(self._trigger_literal, kind="stable")
        lit_sorted, regex_sorted = self._trigger_literal[order], self._trigger_regex[order]
        first = np.searchsorted(lit_sorted, np.arange(n_literals), side="left")
        count = np.searchsorted(lit_sorted, np.arange(n_literals), side="right") - first
        n = count[term_index]
        if not n.any():
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        out_rows = np.repeat(rows, n)
        starts = np.repeat(first[term_index], n)
        within = np.arange(len(out_rows)) - np.repeat(np.cumsum(n) - n, n)
        out_regex = regex_sorted[starts + within]
        # one int64 key per pair, sorted by regex id, then row; a sort, since
        # numpy's hashing unique is several times slower on these sizes
        width = int(rows.max()) + 1
        keys = np.sort(out_regex * width + out_rows)
        keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])]
        return keys % width, keys // width

    def _regex_hits(self, texts: pa.Array, triggered: tuple[np.ndarray, np.ndarray]) -> Hits:
        """Which regex entries hit ``texts``; offsets come later, where needed.

        A screened regex runs only on the rows that hold one of its strings
        (one RE2 pass per regex over few rows); the others are narrowed down
        a tree of smaller alternations over the rows their alternation hits.
        """
        found_rows, found_ids = [], []
        rows, ids = triggered
        if len(ids):
            bounds = np.flatnonzero(np.concatenate([[True], ids[1:] != ids[:-1], [True]]))
            for a, b in zip(bounds[:-1], bounds[1:], strict=True):
                regex_id, these = int(ids[a]), rows[a:b]
                inside = these[_regex_mask(texts.take(pa.array(these)), self._regex_bodies[regex_id])]
                found_rows.append(inside)
                found_ids.append(np.full(len(inside), regex_id, dtype=np.int64))
        if self._untriggered:
            pending = [(np.flatnonzero(self._regex_candidates(texts)), self._untriggered)]
            while pending:
                node_rows, node_ids = pending.pop()
                if len(node_rows) == 0:
                    continue
                if len(node_ids) == 1:
                    found_rows.append(node_rows)
                    found_ids.append(np.full(len(node_rows), node_ids[0], dtype=np.int64))
                    continue
                subset = texts.take(pa.array(node_rows))
                step = max(1, -(-len(node_ids) // _REGEX_FANOUT))
                for first in range(0, len(node_ids), step):
                    group = node_ids[first:first + step]
                    inside = node_rows[_regex_mask(subset, self._alternation(group))]
                    if len(inside):
                        pending.append((inside, group))
        if not found_rows:
            return Hits.empty()
        found = np.concatenate(found_rows)
        return Hits(
            rows=found,
            starts=np.full(len(found), -1, dtype=np.int64),
            entries=np.concatenate(found_ids),
            words=np.zeros(len(found), dtype=bool),
        )

    def _place_regex_hits(self, texts: pa.Array, hits: Hits) -> None:
        """Fill in byte offsets of regex hits in rows that have other hits too."""
        unplaced = hits.starts < 0
        if not unplaced.any():
            return
        per_row = np.bincount(hits.rows, minlength=len(texts))
        needed = unplaced & (per_row[hits.rows] > 1)
        for entry_id in np.unique(hits.entries[needed]):
            where = np.flatnonzero(needed & (hits.entries == entry_id))
            # (pyarrow's find_substring_regex reads the pattern as Latin-1: "." is one byte there)
            pattern = f"(?i)^(?P<pre>(?s:.)*?)(?:{self._regex_bodies[int(entry_id)]})"
            prefixes = pc.extract_regex(texts.take(pa.array(hits.rows[where])), pattern=pattern)
            hits.starts[where] = pc.binary_length(prefixes.field("pre")).to_numpy(zero_copy_only=False)

    def _best_per_row(self, texts: pa.Array, hits: Hits, n_rows: int) -> np.ndarray:
        """Entry id of each row's winning hit, or NO_ENTRY."""
        best = np.full(n_rows, NO_ENTRY, dtype=np.int64)
        if len(hits.rows) == 0:
            return best
        self._place_regex_hits(texts, hits)
        order = np.lexsort((hits.entries, hits.starts, hits.rows))
        rows, starts = hits.rows[order], hits.starts[order]
        entries, words = hits.entries[order], hits.words[order]
        # Winner among the certain hits (everything but word entries).
        certain = ~words
        first = first_per_row(rows[certain])
        best[rows[certain][first]] = entries[certain][first]
        best_start = np.full(n_rows, np.iinfo(np.int64).max, dtype=np.int64)
        best_start[rows[certain][first]] = starts[certain][first]
        # Word occurrences that would win if they are whole tokens, in order.
        contenders = words & (
            (starts < best_start[rows])
            | ((starts == best_start[rows]) & (entries < best[rows]))
        )
        if contenders.any():
            self._settle_words(texts, rows[contenders], starts[contenders], entries[contenders], best)
        return best

    def _settle_words(
        self,
        texts: pa.Array,
        rows: np.ndarray,
        starts: np.ndarray,
        entries: np.ndarray,
        best: np.ndarray,
    ) -> None:
        """Let the first word occurrence per row that is a whole jieba token win."""
        unique_rows, first = np.unique(rows, return_index=True)
        captions = texts.take(pa.array(unique_rows)).to_pylist()
        bounds = [*first.tolist(), len(rows)]
        lengths = [len(self._entries[e].term) for e in entries.tolist()]
        words = jieba_words()
        for k, caption in enumerate(captions):
            encoded = caption.encode("utf-8")
            for j in range(bounds[k], bounds[k + 1]):
                start = len(encoded[: starts[j]].decode("utf-8"))
                if words.is_token(caption, start, start + lengths[j]):
                    best[unique_rows[k]] = entries[j]
                    break

    def _alternation(self, ids: Sequence[int]) -> str:
        return "|".join(f"(?:{self._regex_bodies[i]})" for i in ids)


def _polars(array: pa.Array) -> Any:
    import polars as pl

    return pl.Series(values=array)


def _regex_mask(array: pa.Array, pattern: str) -> np.ndarray:
    hits = pc.match_substring_regex(array, pattern=pattern, ignore_case=True)
    return hits.fill_null(False).to_numpy(zero_copy_only=False)


def _as_string_array(captions: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(captions, pa.ChunkedArray):
        captions = captions.combine_chunks()
    if not isinstance(captions, pa.Array):
        raise TypeError(f"captions must be a pyarrow Array or ChunkedArray, got {type(captions).__name__}")
    if pa.types.is_null(captions.type) or pa.types.is_string_view(captions.type):
        # pyarrow's regex kernels take string and large_string only.
        return captions.cast(pa.large_string())
    if not (pa.types.is_string(captions.type) or pa.types.is_large_string(captions.type)):
        raise TypeError(f"captions must be a string column, got {captions.type}")
    return captions
