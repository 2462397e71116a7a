"""Build a tiny, randomly initialised Marian EN->ZH model on disk, fully offline.

No machine here reaches the Hugging Face hub, so tests (and the demo) make a
model with the same file layout as Helsinki-NLP/opus-mt-en-zh (source.spm,
target.spm, vocab.json, config.json, weights) and load it by path through the
same code path real weights take. Its translations are gibberish; what it
proves is that loading, batching, caching and decoding work.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

_SUBJECTS = ["a man", "a woman", "two dogs", "a cat", "a child", "three people", "a bus", "a train"]
_VERBS = ["is riding", "is holding", "sits on", "stands next to", "looks at", "walks past"]
_OBJECTS = ["a bike", "a red car", "the table", "a small boat", "an umbrella", "the window"]
_PLACES = ["in the park", "on the street", "near the beach", "in a kitchen", "at night", ""]

_ZH_SUBJECTS = [
    "一个男人",
    "一个女人",
    "两只狗",
    "一只猫",
    "一个孩子",
    "三个人",
    "一辆公交车",
    "一列火车",
]
_ZH_VERBS = ["骑着", "拿着", "坐在", "站在旁边", "看着", "走过"]
_ZH_OBJECTS = ["一辆自行车", "一辆红色的汽车", "桌子", "一条小船", "一把雨伞", "窗户"]
_ZH_PLACES = ["在公园里", "在街上", "在海滩附近", "在厨房里", "在夜里", ""]


def sample_sentences(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """``n`` aligned English / Chinese caption-like sentences from a fixed grammar."""
    rng = random.Random(seed)
    en, zh = [], []
    for _ in range(n):
        s, v, o, p = (rng.randrange(len(x)) for x in (_SUBJECTS, _VERBS, _OBJECTS, _PLACES))
        en.append(
            " ".join(w for w in (_SUBJECTS[s], _VERBS[v], _OBJECTS[o], _PLACES[p]) if w) + "."
        )
        zh.append(_ZH_SUBJECTS[s] + _ZH_PLACES[p] + _ZH_VERBS[v] + _ZH_OBJECTS[o] + "。")
    return en, zh


def _train_spm(lines: list[str], prefix: Path, vocab_size: int) -> None:
    import sentencepiece as spm

    text = prefix.with_suffix(".txt")
    text.write_text("\n".join(lines) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(text),
        model_prefix=str(prefix),
        vocab_size=vocab_size,
        character_coverage=1.0,
        model_type="bpe",
        # Marian adds </s> itself and maps pieces through vocab.json, so the
        # sentencepiece models carry only <unk> plus real pieces.
        bos_id=-1,
        eos_id=-1,
        unk_id=0,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    text.unlink()


def build_tiny_marian(out_dir: str | Path, seed: int = 0, n_sentences: int = 300) -> Path:
    """Write a tiny Marian model + tokenizer to ``out_dir`` and return the folder.

    The decoder's end-of-sentence logit is pushed down so random weights still
    emit a non-empty string (generation then stops at ``max_length``).
    """
    import torch
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    en, zh = sample_sentences(n_sentences, seed)
    _train_spm(en, out / "source", vocab_size=120)
    _train_spm(zh, out / "target", vocab_size=60)

    import sentencepiece as spm

    pieces: list[str] = []
    for name in ("source", "target"):
        sp = spm.SentencePieceProcessor(model_file=str(out / f"{name}.model"))
        pieces += [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
        (out / f"{name}.model").rename(out / f"{name}.spm")
        (out / f"{name}.vocab").unlink()
    vocab: dict[str, int] = {"</s>": 0, "<unk>": 1}
    for p in pieces:
        vocab.setdefault(p, len(vocab))
    pad_id = len(vocab)
    vocab["<pad>"] = pad_id  # Marian convention: pad is the last id and decoder start
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")

    config = MarianConfig(
        vocab_size=len(vocab),
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=128,
        pad_token_id=pad_id,
        eos_token_id=0,
        decoder_start_token_id=pad_id,
        forced_eos_token_id=0,
        scale_embedding=True,
        init_std=0.5,  # large random weights so different inputs decode differently
        share_encoder_decoder_embeddings=True,
    )
    torch.manual_seed(seed)
    model = MarianMTModel(config)
    with torch.no_grad():
        model.final_logits_bias[0, 0] = -1e4  # never stop early: keep outputs non-empty
    model.generation_config.num_beams = 1
    model.generation_config.bad_words_ids = [[pad_id]]
    model.generation_config.max_length = 64
    model.save_pretrained(out)

    tok = MarianTokenizer(
        source_spm=str(out / "source.spm"),
        target_spm=str(out / "target.spm"),
        vocab=str(out / "vocab.json"),
        source_lang="en",
        target_lang="zh",
    )
    tok.save_pretrained(out)
    return out
