"""Precision and recall of the caption blacklist on a labelled set.

The labelled set (tests/data/blacklist_eval.tsv) has one caption per line:
``label<TAB>list<TAB>caption``, label ``clean`` or ``junk``; for junk, ``list``
names the list that should catch it; for clean, ``-`` or (a tricky case) the
list whose short terms occur inside the caption. Captions are folded (NFKC)
exactly as stage 1 folds them before matching. Pure: the caller reads files.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

LISTS = ("advertising", "call_to_action", "contact", "watermark", "filenames", "platform")


@dataclass(frozen=True)
class Labelled:
    label: str  # clean | junk
    list_name: str  # expected list (junk) or the trap's list / "-" (clean)
    caption: str


@dataclass
class Quality:
    """Counts per list and the verdict per caption."""

    clean: int = 0
    junk: int = 0
    false_positives: list[tuple[Labelled, str]] = field(default_factory=list)
    missed: list[Labelled] = field(default_factory=list)
    hits_by_list: dict[str, int] = field(default_factory=dict)  # rejects whose reason names the list
    true_by_list: dict[str, int] = field(default_factory=dict)  # ... of them junk
    junk_by_list: dict[str, int] = field(default_factory=dict)
    caught_by_list: dict[str, int] = field(default_factory=dict)  # junk of the list rejected (any list)

    @property
    def false_positive_rate(self) -> float:
        return len(self.false_positives) / self.clean if self.clean else 0.0

    @property
    def recall(self) -> float:
        return (self.junk - len(self.missed)) / self.junk if self.junk else 1.0

    def precision(self, list_name: str) -> float:
        n = self.hits_by_list.get(list_name, 0)
        return self.true_by_list.get(list_name, 0) / n if n else 1.0

    def list_recall(self, list_name: str) -> float:
        n = self.junk_by_list.get(list_name, 0)
        return self.caught_by_list.get(list_name, 0) / n if n else 1.0

    def lines(self) -> list[str]:
        out = [f"{'list':<14} {'junk':>5} {'recall':>7} {'rejects':>8} {'precision':>9}"]
        for name in LISTS:
            out.append(f"{name:<14} {self.junk_by_list.get(name, 0):>5} {self.list_recall(name):>7.3f} "
                       f"{self.hits_by_list.get(name, 0):>8} {self.precision(name):>9.3f}")
        out.append(f"clean {self.clean}: false positives {len(self.false_positives)} "
                   f"({self.false_positive_rate:.2%}); junk {self.junk}: recall {self.recall:.2%}")
        out += [f"  FP  {r}  {c.caption}" for c, r in self.false_positives]
        out += [f"  MISS [{c.list_name}] {c.caption}" for c in self.missed]
        return out


def parse_labelled(text: str) -> list[Labelled]:
    """Rows of a labelled TSV; '#' lines and blank lines are skipped; a bad line is an error."""
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 3 or parts[0] not in ("clean", "junk"):
            raise ValueError(f"line {n}: expected clean|junk<TAB>list<TAB>caption, got {line!r}")
        rows.append(Labelled(*parts))
    return rows


def list_of(reason: str) -> str:
    """The list named by a ``blacklist:<list>:<term>`` reason."""
    return reason.split(":", 2)[1]


def reasons_for(captions: list[str], matcher) -> list[str | None]:
    """Blacklist reasons of raw captions, folded as stage 1 folds them."""
    folded = pc.utf8_normalize(pa.array(captions, pa.string()), "NFKC")
    return matcher.match_array(folded).to_pylist()


def evaluate(rows: list[Labelled], matcher) -> Quality:
    q = Quality()
    for row, reason in zip(rows, reasons_for([r.caption for r in rows], matcher), strict=True):
        if reason is not None:
            name = list_of(reason)
            q.hits_by_list[name] = q.hits_by_list.get(name, 0) + 1
            if row.label == "junk":
                q.true_by_list[name] = q.true_by_list.get(name, 0) + 1
        if row.label == "clean":
            q.clean += 1
            if reason is not None:
                q.false_positives.append((row, reason))
        else:
            q.junk += 1
            q.junk_by_list[row.list_name] = q.junk_by_list.get(row.list_name, 0) + 1
            if reason is None:
                q.missed.append(row)
            else:
                q.caught_by_list[row.list_name] = q.caught_by_list.get(row.list_name, 0) + 1
    return q
