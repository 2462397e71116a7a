"""Chinese BERT WordPiece tokenizer: captions -> fixed-length id tensors.

Chinese RoBERTa-wwm uses BERT's WordPiece vocabulary (21128 entries) where
every CJK character is its own token. Captions become ``[CLS] ... [SEP]``
padded to ``context_length`` (50 in the paper), which is also what the text
tower's [CLS] pooling expects.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from transformers import BertTokenizerFast, PreTrainedTokenizerBase


class CaptionTokenizer:
    """Callable: list of captions -> (input_ids, attention_mask), both [N, L]."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, context_length: int = 50):
        self.tokenizer = tokenizer
        self.context_length = context_length

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def __call__(self, captions: list[str] | str) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(captions, str):
            captions = [captions]
        enc = self.tokenizer(
            list(captions),
            max_length=self.context_length,
            padding="max_length",
            truncation=True,
            return_tensors="pt",
        )
        return enc["input_ids"], enc["attention_mask"]

    def vocab(self) -> list[str]:
        """The vocabulary in id order, so an export can rebuild the tokenizer offline."""
        items = sorted(self.tokenizer.get_vocab().items(), key=lambda kv: kv[1])
        return [tok for tok, _ in items]


def load_tokenizer(source: str, context_length: int = 50) -> CaptionTokenizer:
    """Load from a ``vocab.txt`` file, a folder holding one, or a hub name."""
    p = Path(source)
    if p.is_file():
        tok = BertTokenizerFast(vocab_file=str(p), do_lower_case=True)
    elif p.is_dir():
        tok = BertTokenizerFast.from_pretrained(str(p))
    else:
        try:
            tok = BertTokenizerFast.from_pretrained(source)
        except (OSError, ValueError) as err:  # HFValidationError is a ValueError
            raise FileNotFoundError(
                f"tokenizer {source!r} is neither a vocab file, a folder, nor a reachable "
                f"hub name ({str(err).splitlines()[0]}); set train.tokenizer to a local vocab.txt"
            ) from None
    return CaptionTokenizer(tok, context_length)


def tokenizer_from_vocab(vocab: list[str], context_length: int) -> CaptionTokenizer:
    """Rebuild a tokenizer from an exported vocabulary list (no hub, no kept files)."""
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = Path(tmp) / "vocab.txt"
        vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
        # The fast tokenizer reads the whole file now, so the folder can go.
        return load_tokenizer(str(vocab_file), context_length)
