"""Duplicate keys across a shard folder without holding every key in memory.

A set of a hundred million keys needs gigabytes; a Bloom filter sized at ~10
bits per key (1.2 bytes) answers "maybe seen before" with about 1% false
positives. The keys it flags are only candidates: a second pass over the
sidecars' key columns counts each candidate exactly, so a reported duplicate
is a real one.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterable

import numpy as np

BITS_PER_KEY = 10
N_HASHES = 7
MIN_BITS = 1 << 16


class DuplicateKeyFinder:
    """Feed keys with :meth:`add`; :attr:`candidates` are the keys that may repeat."""

    def __init__(self, expected_keys: int) -> None:
        n_bits = max(MIN_BITS, int(expected_keys * BITS_PER_KEY))
        self.n_bits = 1 << math.ceil(math.log2(n_bits))
        self.bits = np.zeros(self.n_bits // 8, dtype=np.uint8)
        self.candidates: set[str] = set()
        self.count = 0

    def _positions(self, keys: list[str]) -> np.ndarray:
        """(len(keys), N_HASHES) bit positions by double hashing of one blake2b digest."""
        digests = b"".join(hashlib.blake2b(k.encode("utf-8"), digest_size=16).digest() for k in keys)
        pairs = np.frombuffer(digests, dtype="<u8").reshape(-1, 2)
        h1, h2 = pairs[:, :1], pairs[:, 1:] | np.uint64(1)
        steps = np.arange(N_HASHES, dtype=np.uint64)[None, :]
        with np.errstate(over="ignore"):
            return ((h1 + steps * h2) & np.uint64(self.n_bits - 1)).astype(np.int64)

    def add_many(self, keys: list[str]) -> None:
        """Add a batch (one shard's keys); repeats inside the batch are caught too."""
        if not keys:
            return
        pos = self._positions(keys)
        byte, bit = pos >> 3, (pos & 7).astype(np.uint8)
        seen_before = ((self.bits[byte] >> bit) & 1).all(axis=1)
        _, first, counts = np.unique(pos, axis=0, return_index=True, return_counts=True)
        repeated_in_batch = np.ones(len(keys), dtype=bool)
        repeated_in_batch[first] = False
        for i in np.flatnonzero(seen_before | repeated_in_batch):
            self.candidates.add(keys[i])
        # a key repeated in the batch: its first occurrence is a candidate too
        for i in first[counts > 1]:
            self.candidates.add(keys[i])
        np.bitwise_or.at(self.bits, byte.ravel(), (np.uint8(1) << bit).ravel())
        self.count += len(keys)


def confirm_duplicates(candidates: set[str], all_keys: Iterable[str]) -> dict[str, int]:
    """Exact occurrence counts of the candidates that occur more than once."""
    if not candidates:
        return {}
    seen: Counter[str] = Counter(k for k in all_keys if k in candidates)
    return {k: n for k, n in sorted(seen.items()) if n > 1}
