"""Chinese BERT WordPiece tokenizer: captions -> fixed-length id tensors.

Chinese RoBERTa-wwm uses BERT's WordPiece vocabulary (21128 entries) where
every CJK character is its own token. Captions become ``[CLS] ... [SEP]``
padded to ``context_length``: 52 by default, Chinese-CLIP's, so a caption of
50 characters keeps all of them after [CLS] and [SEP]. Captions are
normalised first as Chinese-CLIP's data loaders do (lower case, Chinese curly
double quotes to ``"``): the BERT vocabulary has no entry for the curly
quotes, so without this they become [UNK].
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from transformers import BertTokenizerFast, PreTrainedTokenizerBase

DEFAULT_CONTEXT_LENGTH = 52
# Chinese-CLIP (cn_clip/training/data.py, cn_clip/eval/data.py, _preprocess_text)
QUOTE_MAP = str.maketrans({"\u201c": '"', "\u201d": '"'})


def normalise_caption(text: str) -> str:
    """Lower case and curly double quotes to ASCII, as Chinese-CLIP feeds its tokenizer."""
    return text.lower().translate(QUOTE_MAP)


class CaptionTokenizer:
    """Callable: list of captions -> (input_ids, attention_mask), both [N, L]."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, context_length: int = DEFAULT_CONTEXT_LENGTH):
        self.tokenizer = tokenizer
        self.context_length = context_length

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def __call__(self, captions: list[str] | str) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(captions, str):
            captions = [captions]
        enc = self.tokenizer(
            [normalise_caption(c) for c in captions],
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


def load_tokenizer(source: str, context_length: int = DEFAULT_CONTEXT_LENGTH) -> CaptionTokenizer:
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
