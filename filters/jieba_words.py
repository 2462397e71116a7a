"""jieba's precise-mode tokens (HMM off), for one block of a caption at a time.

A ``word:`` blacklist term counts only where jieba makes its occurrence one
whole token. Running ``jieba.lcut`` on every candidate caption was the cost of
those terms; this computes the same tokens with jieba's own dictionary and
arithmetic, for just the block that holds the occurrence, with caches.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Any


class JiebaWords:
    """Whether a span of a caption is one whole token of jieba's precise mode
    with HMM off (``jieba.lcut(text, HMM=False)``), computed only for the
    block that holds the span.

    jieba segments each run of Han characters, ASCII letters, digits and
    ``+#&._%-`` on its own, picking the most probable path through the words of
    its dictionary. This class runs that same search with jieba's dictionary
    and arithmetic, but on one block and with the word log-probabilities
    cached, which makes the few captions that need it several times cheaper.
    ``tests/filters/test_blacklist.py`` checks it against ``jieba.lcut``.
    """

    def __init__(self) -> None:
        import jieba

        jieba.setLogLevel(logging.WARNING)
        # A private tokenizer: words other code adds to jieba's global one
        # must not move our tokens.
        tokenizer = jieba.Tokenizer()
        tokenizer.initialize()
        self._freq: dict[str, int] = tokenizer.FREQ
        self._log_total = math.log(tokenizer.total)
        # fragment -> log-probability if a word, None if only a prefix of
        # words, _NOT_A_PREFIX otherwise; filled as fragments are met.
        self._info: dict[str, Any] = {}
        # Captions repeat phrases ("街边的广告牌"), so segmented blocks are kept.
        self._blocks: dict[str, set[tuple[int, int]]] = {}
        self._block = jieba.re_han_default
        self._skip = jieba.re_skip_default

    def is_token(self, text: str, start: int, end: int) -> bool:
        """True when ``text[start:end]`` (character offsets) is one token."""
        for block in self._block.finditer(text):
            if block.start() <= start < block.end():
                if end > block.end():
                    return False
                text_of_block = block.group()
                spans = self._blocks.get(text_of_block)
                if spans is None:
                    if len(self._blocks) >= _BLOCK_CACHE_LIMIT:
                        self._blocks.clear()
                    spans = self._blocks[text_of_block] = set(self.block_spans(text_of_block))
                return (start - block.start(), end - block.start()) in spans
        # Outside the blocks jieba yields "\r\n", other whitespace and every
        # other character one by one.
        return end - start == 1 or text[start:end] == "\r\n"

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Character spans of all tokens of ``text``, as jieba.lcut(HMM=False) cuts it."""
        out: list[tuple[int, int]] = []
        position = 0
        for piece in self._block.split(text):
            if not piece:
                continue
            if self._block.fullmatch(piece):
                out.extend((position + a, position + b) for a, b in self.block_spans(piece))
            else:
                for part in self._skip.split(piece):
                    if self._skip.fullmatch(part):
                        out.append((position, position + len(part)))
                        position += len(part)
                    else:
                        out.extend((position + k, position + k + 1) for k in range(len(part)))
                        position += len(part)
                continue
            position += len(piece)
        return out

    def _lookup(self, fragment: str) -> Any:
        if len(self._info) > _INFO_CACHE_LIMIT:
            self._info.clear()
        count = self._freq.get(fragment)
        if count is None:
            value: Any = _NOT_A_PREFIX
        elif count:
            value = math.log(count) - self._log_total
        else:
            value = None
        self._info[fragment] = value
        return value

    def block_spans(self, block: str) -> list[tuple[int, int]]:
        """Token spans of one block (``__cut_DAG_NO_HMM`` of jieba 0.42)."""
        info, lookup = self._info, self._lookup
        unknown_word = -self._log_total  # jieba's log(1) - log(total) for a lone character
        n = len(block)
        # Best path from the right over the dictionary's words, exactly as
        # jieba's calc(): score(word) = log(freq) - log(total), ties go to the
        # longer word as jieba's max() over (score, end) tuples does.
        score = [0.0] * (n + 1)
        choice = [0] * n
        for k in range(n - 1, -1, -1):
            best_score, best_end = -math.inf, -1
            i, frag = k, block[k]
            while i < n:
                word_score = info.get(frag, _UNSEEN)
                if word_score is _UNSEEN:
                    word_score = lookup(frag)
                if word_score is _NOT_A_PREFIX:
                    break
                if word_score is not None:
                    candidate = word_score + score[i + 1]
                    if candidate >= best_score:
                        best_score, best_end = candidate, i
                i += 1
                frag = block[k:i + 1]
            if best_end < 0:
                best_score, best_end = unknown_word + score[k + 1], k
            score[k], choice[k] = best_score, best_end
        spans: list[tuple[int, int]] = []
        x, run_start = 0, -1
        while x < n:
            y = choice[x] + 1
            if y - x == 1 and block[x] in _ASCII_ALNUM:
                if run_start < 0:
                    run_start = x
            else:
                if run_start >= 0:
                    spans.append((run_start, x))
                    run_start = -1
                spans.append((x, y))
            x = y
        if run_start >= 0:
            spans.append((run_start, n))
        return spans


_UNSEEN = object()
_NOT_A_PREFIX = object()
_INFO_CACHE_LIMIT = 2_000_000
_BLOCK_CACHE_LIMIT = 100_000
_ASCII_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_WORDS: JiebaWords | None = None
_WORDS_LOCK = threading.Lock()


def jieba_words() -> JiebaWords:
    """The process-wide :class:`JiebaWords`, loaded on first use (about 1 s)."""
    global _WORDS
    if _WORDS is None:
        with _WORDS_LOCK:
            if _WORDS is None:
                _WORDS = JiebaWords()
    return _WORDS
