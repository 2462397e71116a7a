"""The held-out blacklist set is frozen: written before the category lists were tuned (issue 23).

Its figures are the only ones the README may quote, so it must not drift towards
the lists. Any edit to the file changes its hash and fails here; a deliberate
re-freeze updates the hash in a commit of its own, before any list tuning.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from zhclip.filters.blacklist_quality import parse_labelled

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
