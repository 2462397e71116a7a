"""Read caption blacklists from their plain-text files.

The lists are data, not code, so a reviewer can read and extend them without
touching Python, and a user can add files of their own. Each line of a list is
one entry whose match kind is chosen by its prefix:

* a plain line is a substring, ASCII letters matched case-insensitively;
* ``re(<name>):<pattern>`` is a regular expression that must compile both in
  Python's ``re`` and in RE2 (the engine behind ``pyarrow.compute``), because
  the matcher scans whole columns with RE2 and locates the hit with ``re``.
  ``<name>`` (lower-case letters, digits, ``_``; unique in its list) is what
  the reject reason says, ``blacklist:contact:mobile_number`` rather than the
  pattern. Every shipped regex has one; ``re:<pattern>`` without a name is
  still read (user lists), and then the reason carries the pattern;
* ``word:<term>`` hits only when ``<term>`` is a whole jieba token, so a short
  term does not fire inside a longer innocent word.

``#`` starts a comment line; blank lines are skipped; surrounding whitespace
is dropped. Shipped lists are read through :mod:`importlib.resources` so they
work the same from a checkout, a wheel or the sdist that Dataflow workers
install.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc

MatchKind = Literal["substring", "regex", "word"]

BUILTIN = "builtin"
REGEX_PREFIX = "re:"
NAMED_REGEX = re.compile(r"re\(([a-z0-9_]+)\):(.*)\Z", re.DOTALL)
NAMED_REGEX_START = "re("
WORD_PREFIX = "word:"
LIST_SUFFIX = ".txt"

# Order of the shipped lists inside "builtin"; it is also the tie-break order
# when two lists hit at the same place. The narrow lists come first so that,
# say, "微信图片_2019..." is reported as a file name rather than as an ad for
# WeChat. Any further shipped file follows in name order.
BUILTIN_ORDER = ("filenames", "watermark", "contact", "advertising")

# Python's re must see ASCII classes to agree with RE2 on \d, \w, \s and \b.
PYTHON_REGEX_FLAGS = re.IGNORECASE | re.ASCII


@dataclass(frozen=True)
class BlacklistEntry:
    """One line of a list: the list it came from, how it matches, and what."""

    list_name: str
    kind: MatchKind
    term: str
    name: str | None = None  # a regex's short name, said by its reject reason

    @property
    def label(self) -> str:
        """What the reject reason names: the regex's name, else the term itself."""
        return self.name or self.term


def available_lists() -> list[str]:
    """Names of the shipped lists, in ``builtin`` order."""
    shipped = {
        item.name[: -len(LIST_SUFFIX)]
        for item in _lists_dir().iterdir()
        if item.name.endswith(LIST_SUFFIX) and item.is_file()
    }
    ordered = [name for name in BUILTIN_ORDER if name in shipped]
    return ordered + sorted(shipped - set(ordered))


def load_entries(
    lists: Sequence[str] = (BUILTIN,),
    extra_files: Sequence[str | os.PathLike[str]] = (),
) -> list[BlacklistEntry]:
    """Entries of the named shipped lists followed by those of ``extra_files``.

    ``"builtin"`` stands for every shipped list. A user file's list name is its
    stem (``my_ads.txt`` -> ``my_ads``). Entries keep file and line order, which
    is the tie-break order of the matcher; an entry that repeats an earlier one
    exactly is dropped. Raises ValueError naming the file (and line) for an
    unknown list name, a missing file or a bad entry.
    """
    if isinstance(lists, str) or isinstance(extra_files, str | os.PathLike):
        raise TypeError("lists and extra_files take sequences of names, not one string")
    shipped = available_lists()
    names: list[str] = []
    for name in lists:
        if name == BUILTIN:
            names.extend(shipped)
        elif name in shipped:
            names.append(name)
        else:
            raise ValueError(
                f"unknown blacklist list {name!r}: shipped lists are "
                f"{', '.join([BUILTIN, *shipped])}; put your own list in extra_files"
            )
    entries: list[BlacklistEntry] = []
    for name in dict.fromkeys(names):
        resource = _lists_dir() / f"{name}{LIST_SUFFIX}"
        entries.extend(parse_list(resource.read_text(encoding="utf-8"), name, f"blacklist/lists/{name}.txt"))
    for extra in extra_files:
        path = Path(extra)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ValueError(f"blacklist file {path} does not exist") from None
        except UnicodeDecodeError as err:
            raise ValueError(f"blacklist file {path} is not UTF-8: {err}") from None
        except OSError as err:
            raise ValueError(f"blacklist file {path} cannot be read: {err}") from None
        entries.extend(parse_list(text, path.stem, str(path)))
    return list(dict.fromkeys(entries))


def parse_list(text: str, list_name: str, source: str) -> list[BlacklistEntry]:
    """Entries of one list file's ``text``; ``source`` names it in errors."""
    if not list_name or ":" in list_name:
        raise ValueError(f"blacklist file {source}: list name {list_name!r} must be non-empty and free of ':'")
    entries = []
    named: dict[str, int] = {}
    for number, line in _content_lines(text.splitlines()):
        entry = parse_line(line, list_name, source, number)
        if entry.name is not None:
            if entry.name in named:
                raise ValueError(f"blacklist file {source}, line {number}: regex name "
                                 f"{entry.name!r} is already used on line {named[entry.name]}")
            named[entry.name] = number
        entries.append(entry)
    return entries


def parse_line(line: str, list_name: str, source: str, number: int) -> BlacklistEntry:
    """One entry from a stripped, non-comment line; ValueError names the line."""
    where = f"blacklist file {source}, line {number}"
    if line.startswith(NAMED_REGEX_START):
        found = NAMED_REGEX.match(line)
        if found is None:
            raise ValueError(f"{where}: a named regex reads re(<name>):<pattern>, the name in "
                             "lower-case letters, digits and _")
        name, pattern = found.group(1), found.group(2).strip()
        if not pattern:
            raise ValueError(f"{where}: empty pattern after re({name}):")
        check_regex(pattern, where)
        return BlacklistEntry(list_name, "regex", pattern, name)
    if line.startswith(REGEX_PREFIX):
        pattern = line[len(REGEX_PREFIX):].strip()
        if not pattern:
            raise ValueError(f"{where}: empty pattern after {REGEX_PREFIX!r}")
        check_regex(pattern, where)
        return BlacklistEntry(list_name, "regex", pattern)
    if line.startswith(WORD_PREFIX):
        term = line[len(WORD_PREFIX):].strip()
        if not term:
            raise ValueError(f"{where}: empty term after {WORD_PREFIX!r}")
        if any(ch.isspace() for ch in term):
            raise ValueError(f"{where}: word term {term!r} contains whitespace, so it is never one token")
        return BlacklistEntry(list_name, "word", term)
    return BlacklistEntry(list_name, "substring", line)


def check_regex(pattern: str, where: str) -> None:
    """Raise ValueError unless ``pattern`` compiles in both engines and cannot hit empty text."""
    try:
        compiled = re.compile(pattern, PYTHON_REGEX_FLAGS)
    except re.error as err:
        raise ValueError(f"{where}: invalid regex {pattern!r}: {err}") from None
    try:
        pc.match_substring_regex(pa.array([""]), pattern=pattern, ignore_case=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        raise ValueError(
            f"{where}: regex {pattern!r} is not valid RE2 (no look-around or back-references): {err}"
        ) from None
    for probe in ("", "a", "图 1"):
        found = compiled.search(probe)
        if found is not None and found.end() == found.start():
            raise ValueError(
                f"{where}: regex {pattern!r} can match empty text, so it would hit almost every caption"
            )


def _content_lines(lines: Iterable[str]) -> Iterable[tuple[int, str]]:
    for number, raw in enumerate(lines, start=1):
        line = raw.lstrip("\ufeff").strip()
        if line and not line.startswith("#"):
            yield number, line


def _lists_dir():  # -> importlib.resources.abc.Traversable
    return resources.files("zhclip.blacklist") / "lists"
