"""Hit tables of the blacklist matcher: parallel arrays, one element per (row, entry) hit.

Kept apart from filters/blacklist.py, which finds the hits; these only hold,
join and scatter them.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

# Entry id meaning "no entry": larger than any real id, so a minimum ignores it.
NO_ENTRY = np.iinfo(np.int64).max


class Hits:
    """Parallel arrays: one element per (row, entry) hit."""

    def __init__(
        self, rows: np.ndarray, starts: np.ndarray, entries: np.ndarray, words: np.ndarray
    ):
        self.rows, self.starts, self.entries, self.words = rows, starts, entries, words

    @classmethod
    def empty(cls) -> Hits:
        return cls(*(np.zeros(0, dtype=np.int64) for _ in range(3)), np.zeros(0, dtype=bool))

    @classmethod
    def concat(cls, *parts: Hits) -> Hits:
        return cls(
            np.concatenate([p.rows for p in parts]),
            np.concatenate([p.starts for p in parts]),
            np.concatenate([p.entries for p in parts]),
            np.concatenate([p.words for p in parts]),
        )

    def without_missing_entries(self) -> Hits:
        keep = self.entries != NO_ENTRY
        return Hits(self.rows[keep], self.starts[keep], self.entries[keep], self.words[keep])


def first_per_row(sorted_rows: np.ndarray) -> np.ndarray:
    """Index of the first element of each run of equal values."""
    if len(sorted_rows) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.concatenate([[True], sorted_rows[1:] != sorted_rows[:-1]]))


def scatter(values: pa.Array, rows: np.ndarray, n: int) -> pa.Array:
    """A length-``n`` string array holding ``values[k]`` at ``rows[k]``, null elsewhere."""
    index = np.full(n, -1, dtype=np.int64)
    index[rows] = np.arange(len(rows), dtype=np.int64)
    return values.take(pa.array(index, mask=index < 0))
