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
  term does not fire inside a longer innocent word;
* ``set(<name>):<a>|<b>|...`` names a set of alternatives (regex syntax) that
  later regexes of the same file use as ``{<name>}``. A category is written as
  its verbs and its objects, and a rule combines them
  (``re(tap_to_view):{tap}\\s*{view}``), so a new pairing of known words is
  caught without a phrase of its own. A set matches nothing by itself.

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
SET_DEFINITION = re.compile(r"set\(([a-z0-9_]+)\):(.*)\Z", re.DOTALL)
SET_START = "set("
# A reference to a set; RE2 and re read "{" only before digits, so a name is unambiguous.
SET_REFERENCE = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
LIST_SUFFIX = ".txt"

# Order of the shipped lists inside "builtin"; it is also the tie-break order
# when two lists hit at the same place. The narrow lists come first so that,
# say, "微信图片_2019..." is reported as a file name rather than as an ad for
# WeChat. Any further shipped file follows in name order.
BUILTIN_ORDER = ("filenames", "watermark", "contact", "platform", "call_to_action", "advertising")

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
    sets: dict[str, str] = {}
    for number, line in _content_lines(text.splitlines()):
        if line.startswith(SET_START):
            name, body = parse_set(line, source, number, sets)
            sets[name] = body
            continue
        if line.startswith((NAMED_REGEX_START, REGEX_PREFIX)):
            line = expand_sets(line, sets, source, number)
        entry = parse_line(line, list_name, source, number)
        if entry.name is not None:
            if entry.name in named:
                raise ValueError(f"blacklist file {source}, line {number}: regex name "
                                 f"{entry.name!r} is already used on line {named[entry.name]}")
            named[entry.name] = number
        entries.append(entry)
    return entries


def parse_set(line: str, source: str, number: int, sets: dict[str, str]) -> tuple[str, str]:
    """Name and body of a ``set(<name>):`` line; its body may use sets defined above it."""
    where = f"blacklist file {source}, line {number}"
    found = SET_DEFINITION.match(line)
    if found is None:
        raise ValueError(f"{where}: a set reads set(<name>):<a>|<b>|..., the name in "
                         "lower-case letters, digits and _")
    name, body = found.group(1), expand_sets(found.group(2).strip(), sets, source, number)
    if not body:
        raise ValueError(f"{where}: empty set {name!r}")
    if name in sets:
        raise ValueError(f"{where}: set {name!r} is already defined")
    check_regex(f"(?:{body})", where)
    return name, body


def expand_sets(line: str, sets: dict[str, str], source: str, number: int) -> str:
    """``line`` with each ``{<name>}`` replaced by its set as a non-capturing group."""
    if "{" not in line:
        return line

    def body(found: re.Match[str]) -> str:
        name = found.group(1)
        if name not in sets:
            raise ValueError(f"blacklist file {source}, line {number}: set {{{name}}} is not "
                             "defined above this line")
        return f"(?:{sets[name]})"

    return SET_REFERENCE.sub(body, line)


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
