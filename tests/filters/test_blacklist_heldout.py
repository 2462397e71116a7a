"""The held-out blacklist set is frozen: written before the category lists were tuned (issue 23).

Its figures are the only ones the README may quote, so it must not drift towards
the lists. Any edit to the file changes its hash and fails here; a deliberate
re-freeze updates the hash in a commit of its own, before any list tuning.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from zhclip.filters.blacklist import BlacklistMatcher
from zhclip.filters.blacklist_quality import evaluate, parse_labelled

HELDOUT = Path(__file__).resolve().parents[1] / "data" / "blacklist_heldout.tsv"
FROZEN_SHA256 = "a0892ef0fb51b579c289f7c3f72c5a43b869b6aeb79b25384e7dfbfc8bc92dcd"
FROZEN_CLEAN, FROZEN_JUNK = 324, 180


def test_heldout_set_is_frozen():
    data = HELDOUT.read_bytes()
    assert hashlib.sha256(data).hexdigest() == FROZEN_SHA256, "the held-out set changed"
    rows = parse_labelled(data.decode("utf-8"))
    assert sum(r.label == "clean" for r in rows) == FROZEN_CLEAN
    assert sum(r.label == "junk" for r in rows) == FROZEN_JUNK
    assert len({r.caption for r in rows}) == len(rows)  # no caption counted twice


def test_heldout_set_differs_from_the_projects_own_set():
    own = parse_labelled((HELDOUT.parent / "blacklist_eval.tsv").read_text(encoding="utf-8"))
    heldout = parse_labelled(HELDOUT.read_text(encoding="utf-8"))
    assert not {r.caption for r in own} & {r.caption for r in heldout}


def test_heldout_recall_and_false_positive_rate_meet_the_targets():
    """The figures the README quotes: recall >= 0.95, false positives <= 1% of clean captions."""
    q = evaluate(parse_labelled(HELDOUT.read_text(encoding="utf-8")), BlacklistMatcher.from_lists())
    print(
        f"\nheld-out: recall {q.recall:.2%} of {q.junk} junk, "
        f"false positives {len(q.false_positives)} of {q.clean} clean ({q.false_positive_rate:.2%})"
    )
    assert q.recall >= 0.95 and q.false_positive_rate <= 0.01
