"""Blacklist patterns, read as what they match: literal lists where they are, RE2 text otherwise.

The matcher (filters/blacklist.py) sends literal terms to an Aho-Corasick pass
and keeps RE2 for real regexes; these helpers decide which is which, fold
case the way polars' ``ascii_case_insensitive`` does, and rewrite a pattern
into the forms RE2's extract kernels accept.
"""

from __future__ import annotations


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
