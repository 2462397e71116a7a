"""Blacklist patterns, read as what they match: literal lists where they are, RE2 text otherwise.

The matcher (filters/blacklist.py) sends literal terms to an Aho-Corasick pass
and keeps RE2 for real regexes; these helpers decide which is which, fold
case the way polars' ``ascii_case_insensitive`` does, and rewrite a pattern
into the forms RE2's extract kernels accept.
"""

from __future__ import annotations

# Python's own regex parser: only the prefilter (required_literals) reads syntax trees.
import re._parser as _sre_parser
from collections.abc import Sequence
from re._constants import ANY, AT, BRANCH, IN, LITERAL, MAX_REPEAT, MIN_REPEAT, SUBPATTERN


def ascii_lower(text: str) -> str:
    """``text`` with only A-Z lowered, the fold polars' ascii_case_insensitive uses."""
    return text.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


_REGEX_SYNTAX = frozenset("\\.^$*+?{}[]()|")
_MAX_ALTERNATIVES = 256


def literal_alternatives(pattern: str) -> list[str] | None:
    """All strings ``pattern`` matches when it is built only from literal
    characters, escaped punctuation, groups of alternatives and classes of
    single characters; None for anything else (repeats, anchors, \\d ...),
    or for more than 256 strings.

    Matched as literals, such a pattern folds ASCII case only, where RE2 would
    also fold the Kelvin sign and long s into k and s.
    """
    parser = _LiteralParser(pattern)
    try:
        strings = parser.alternation()
    except _NotLiteral:
        return None
    if parser.pos != len(pattern) or not strings or "" in strings:
        return None
    return list(dict.fromkeys(strings))


class _NotLiteral(Exception):
    pass


class _LiteralParser:
    def __init__(self, pattern: str) -> None:
        self.pattern, self.pos = pattern, 0

    def alternation(self) -> list[str]:
        strings = self.sequence()
        while self._peek() == "|":
            self.pos += 1
            strings = strings + self.sequence()
            self._check_size(strings)
        return strings

    def sequence(self) -> list[str]:
        strings = [""]
        while (ch := self._peek()) not in ("", "|", ")"):
            if ch == "(":
                for opening in ("(?:", "("):
                    if self.pattern.startswith(opening, self.pos):
                        break
                if opening == "(" and self.pattern.startswith("(?", self.pos):
                    raise _NotLiteral
                self.pos += len(opening)
                parts = self.alternation()
                if self._peek() != ")":
                    raise _NotLiteral
                self.pos += 1
            elif ch == "[":
                parts = self._char_class()
            elif ch == "\\":
                parts = [self._escaped()]
            elif ch in _REGEX_SYNTAX:
                raise _NotLiteral
            else:
                parts = [ch]
                self.pos += 1
            if self._peek() in ("*", "+", "?", "{"):
                raise _NotLiteral
            strings = [a + b for a in strings for b in parts]
            self._check_size(strings)
        return strings

    def _char_class(self) -> list[str]:
        self.pos += 1
        members: list[str] = []
        while (ch := self._peek()) != "]":
            if ch in ("", "^", "-", "[") :
                raise _NotLiteral
            if ch == "\\":
                members.append(self._escaped())
            else:
                members.append(ch)
                self.pos += 1
        self.pos += 1
        if not members:
            raise _NotLiteral
        return members

    def _escaped(self) -> str:
        escaped = self.pattern[self.pos + 1:self.pos + 2]
        if not escaped or escaped.isalnum() or escaped.isspace() or not escaped.isascii():
            raise _NotLiteral  # \\d, \\b, \\x41 ... are not plain characters
        self.pos += 2
        return escaped

    def _peek(self) -> str:
        return self.pattern[self.pos:self.pos + 1]

    @staticmethod
    def _check_size(strings: list[str]) -> None:
        if len(strings) > _MAX_ALTERNATIVES:
            raise _NotLiteral


def re2_literal(text: str) -> str:
    """``text`` as an RE2 pattern that matches it literally."""
    return "".join("\\" + ch if ch in _RE2_SPECIAL else ch for ch in text)


_RE2_SPECIAL = frozenset("\\.+*?()|[]{}^$")


def without_captures(pattern: str) -> str:
    """``pattern`` with every capturing group made non-capturing.

    ``extract_regex`` needs its own named group and rejects unnamed ones, and
    without back-references (RE2 has none) captures do not change what matches.
    """
    out: list[str] = []
    i, n, in_class = 0, len(pattern), False
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            out.append(pattern[i:i + 2])
            i += 2
            continue
        if in_class:
            if pattern.startswith("[:", i) and (close := pattern.find(":]", i + 2)) >= 0:
                out.append(pattern[i:close + 2])
                i = close + 2
                continue
            if ch == "]":
                in_class = False
        elif ch == "[":
            in_class = True
            out.append(ch)
            i += 1
            # A ']' right after '[' or '[^' is a literal member, not the end.
            if i < n and pattern[i] == "^":
                out.append("^")
                i += 1
            if i < n and pattern[i] == "]":
                out.append("]")
                i += 1
            continue
        elif ch == "(":
            if pattern.startswith("(?P<", i):
                out.append("(?:")
                i = pattern.index(">", i) + 1
                continue
            if not pattern.startswith("(?", i):
                out.append("(?:")
                i += 1
                continue
        out.append(ch)
        i += 1
    return "".join(out)


def required_literals(pattern: str) -> list[str] | None:
    """Strings one of which every match of ``pattern`` contains, or None when
    no such small set is found (a pattern that can match with no fixed text,
    like ``\\d{13,}``).

    The matcher screens a column for these strings with one cheap literal pass
    and runs the regex only on the rows that hold one, which is what keeps
    many combined verb-and-object rules fast. Read with Python's own regex
    parser; the shipped patterns are checked to mean the same in RE2. Letters
    are as written: the caller folds case.
    """
    try:
        parsed = _sre_parser.parse(pattern, 0)
    except Exception:  # noqa: BLE001 - any parse failure just means "no prefilter"
        return None
    found = _sequence(list(parsed))[1]
    if not found or "" in found:
        return None
    return sorted(found)


# Most strings a prefilter set may hold; beyond it a rule is screened by another of its parts.
_MAX_REQUIRED = 64
_MAX_REQUIRED_UNION = 256  # alternatives' sets together (the matcher drops strings that hold others)
_Sets = tuple[frozenset[str] | None, frozenset[str] | None]  # (exact strings, required strings)


def _sequence(items: list) -> _Sets:
    """(every string the sequence can match, strings one of which each match holds)."""
    exact: frozenset[str] | None = frozenset([""])
    run: frozenset[str] | None = frozenset([""])  # product of the current run of exact items
    best: frozenset[str] | None = None
    for op, av in items:
        item_exact, item_required = _item(op, av)
        if item_exact is not None and run is not None:
            product = frozenset(a + b for a in run for b in item_exact)
            run = product if len(product) <= _MAX_REQUIRED else None
        else:
            best = _better(best, run)
            run = item_exact
        best = _better(best, item_required)
        if exact is not None:
            product = frozenset(a + b for a in exact for b in item_exact) if item_exact is not None else None
            exact = product if product is not None and len(product) <= _MAX_REQUIRED else None
    best = _better(best, run)
    return exact, best


def _item(op, av) -> _Sets:
    if op is LITERAL:
        return frozenset([chr(av)]), frozenset([chr(av)])
    if op is AT:
        return frozenset([""]), None
    if op is IN:
        chars = [chr(v) for o, v in av if o is LITERAL]
        if len(chars) == len(av) and len(chars) <= 16:
            return frozenset(chars), frozenset(chars)
        return None, None
    if op is SUBPATTERN:
        return _sequence(list(av[-1]))
    if op is BRANCH:
        parts = [_sequence(list(alt)) for alt in av[1]]
        exact = None
        if all(p[0] is not None for p in parts):
            exact = frozenset().union(*(p[0] for p in parts))
            exact = exact if len(exact) <= _MAX_REQUIRED else None
        required = None
        if all(p[1] for p in parts):
            required = frozenset().union(*(p[1] for p in parts))
            required = required if len(required) <= _MAX_REQUIRED_UNION else None
        return exact, required
    if op in (MAX_REPEAT, MIN_REPEAT):
        low, high, body = av
        inner = _sequence(list(body))
        if low == 0:
            return None, None
        return (inner[0] if low == high == 1 else None), inner[1]
    if op is ANY:
        return None, None
    return None, None


def _better(a: frozenset[str] | None, b: frozenset[str] | None) -> frozenset[str] | None:
    """The more selective prefilter set: longer shortest string, then fewer strings."""
    if not b or "" in b:
        return a
    if not a:
        return b
    key_a, key_b = (min(map(len, a)), -len(a)), (min(map(len, b)), -len(b))
    return b if key_b > key_a else a


def minimal_strings(strings: Sequence[str]) -> list[str]:
    """``strings`` less every one that holds another: a text holds one of the
    rest exactly when it holds one of them all."""
    kept: list[str] = []
    for text in sorted(set(strings), key=len):
        if not any(other in text for other in kept):
            kept.append(text)
    return sorted(kept)


def case_variants(strings: Sequence[str] | None) -> list[str] | None:
    """Folded ``strings`` plus the spellings RE2's case folding also accepts
    and an ASCII fold does not (K for k, long s for s); None for None.

    The screen is an ASCII-folding literal pass, the regex is RE2 with
    Unicode folding: without these a caption with a Kelvin sign would skip a
    regex that matches it.
    """
    if strings is None:
        return None
    out: list[str] = []
    for text in strings:
        if any(not ch.isascii() and ch.lower() != ch.upper() for ch in text):
            return None  # a cased letter beyond ASCII: leave this regex unscreened
        variants = [""]
        for ch in ascii_lower(text):
            variants = [v + alt for v in variants for alt in _UNICODE_FOLDS.get(ch, ch)]
        if len(variants) > _MAX_CASE_VARIANTS:
            return None
        out.extend(variants)
    return out


_UNICODE_FOLDS = {"k": ("k", "\u212a"), "s": ("s", "\u017f")}
_MAX_CASE_VARIANTS = 8
