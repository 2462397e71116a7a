"""Build a tiny M-CLIP checkpoint and a tiny open_clip image tower on disk, offline.

No machine here reaches the Hugging Face hub, so tests, the demo and the CPU
benchmark make models with the same file layout as the released ones and load
them by path through pipeline.mclip, the code path real weights take:

- M-CLIP folder (like M-CLIP/XLM-Roberta-Large-Vit-B-32): config.json with
  model_type "M-CLIP", modelBase, transformerDimensions, numDims; weights keyed
  ``transformer.*`` / ``LinearTransformation.*``; sentencepiece + fast
  tokenizer files. ``modelBase`` points at a folder holding only the tiny
  XLM-R config.json (no base weights anywhere, as with the real checkpoint).
- open_clip folder for ``local-dir:``: open_clip_config.json + weights.
"""

from __future__ import annotations

import json
from pathlib import Path

_ZH = [
    "一只猫坐在窗台上晒太阳", "两个孩子在公园里踢足球", "红色的汽车停在路边", "海边的日落非常美丽",
    "厨房里有一张木桌子", "一个女人拿着一把雨伞", "火车站里人来人往", "山上覆盖着白雪",
    "桌子上放着一碗面条", "小狗在草地上奔跑", "城市夜景灯火通明", "一辆公交车驶过街道",
]
_EN = ["a cat on a windowsill", "children playing football", "a red car", "sunset at the beach"]


def build_tiny_tokenizer(folder: Path, vocab_size: int = 200):
    """Sentencepiece model trained on a few sentences, wrapped as an XLM-R fast tokenizer.

    The fast tokenizer is assembled with the tokenizers library from the
    sentencepiece pieces (XLM-R's fairseq id layout: <s> <pad> </s> <unk>,
    pieces, <mask>): converting a slow tokenizer would need a protobuf runtime
    that matches sentencepiece's generated code, which this environment lacks.
    """
    import sentencepiece as spm
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import XLMRobertaTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join((_ZH + _EN) * 4) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(folder / "spm"),
        vocab_size=vocab_size,
        character_coverage=1.0,
        model_type="unigram",
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    corpus.unlink()
    sp = spm.SentencePieceProcessor(model_file=str(folder / "spm.model"))
    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(sp.id_to_piece(i), sp.get_score(i)) for i in range(3, sp.get_piece_size())]
    vocab.append(("<mask>", 0.0))
    tok = Tokenizer(models.Unigram(vocab, unk_id=3, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(" {2,}", " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    tok.save(str(folder / "tokenizer.json"))
    (folder / "spm.model").rename(folder / "sentencepiece.bpe.model")
    return XLMRobertaTokenizerFast(
        vocab_file=str(folder / "sentencepiece.bpe.model"),
        tokenizer_file=str(folder / "tokenizer.json"),
    )


def build_tiny_mclip(folder: str | Path, hidden: int = 32, layers: int = 2, out_dim: int = 24,
                     seed: int = 0) -> Path:
    """Write a tiny M-CLIP checkpoint folder and return it."""
    import torch
    from safetensors.torch import save_file
    from transformers import XLMRobertaConfig, XLMRobertaModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    work = folder.parent / (folder.name + "-tok")
    tokenizer = build_tiny_tokenizer(work)
    tokenizer.save_pretrained(str(folder))
    for f in work.iterdir():
        f.unlink()
    work.rmdir()

    base_dir = folder.parent / (folder.name + "-base")
    base_cfg = XLMRobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=hidden * 2,
        max_position_embeddings=66,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    base_cfg.save_pretrained(str(base_dir))  # config only: the "base model" has no weights here

    torch.manual_seed(seed)
    transformer = XLMRobertaModel(base_cfg)
    linear = torch.nn.Linear(hidden, out_dim)
    state = {f"transformer.{k}": v for k, v in transformer.state_dict().items()}
    state.update({f"LinearTransformation.{k}": v for k, v in linear.state_dict().items()})
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(
        json.dumps(
            {
                "_name_or_path": str(folder),
                "architectures": ["MultilingualCLIP"],
                "model_type": "M-CLIP",
                "modelBase": str(base_dir),
                "transformerDimensions": hidden,
                "numDims": out_dim,
                "torch_dtype": "float32",
                "transformers_version": "4.57.6",
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    return folder


def tiny_open_clip_config(embed_dim: int = 24, image_size: int = 32, width: int = 32,
                          layers: int = 2, patch_size: int = 8) -> dict:
    """open_clip config of a tiny ViT; ``quick_gelu`` as in OpenAI's CLIP (and M-CLIP's tower)."""
    return {
        "model_cfg": {
            "embed_dim": embed_dim,
            "quick_gelu": True,
            "vision_cfg": {"image_size": image_size, "layers": layers, "width": width,
                           "patch_size": patch_size, "head_width": 16},
            "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 16, "heads": 2,
                         "layers": 1},
        },
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                           "std": [0.26862954, 0.26130258, 0.27577711]},
    }


def build_tiny_open_clip(folder: str | Path, seed: int = 0, **kwargs) -> Path:
    """Write an open_clip ``local-dir:`` folder with a tiny ViT and return it."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = tiny_open_clip_config(**kwargs)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**cfg["model_cfg"])
    (folder / "open_clip_config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(folder / "open_clip_model.safetensors"))
    return folder


def build_tiny_models(root: str | Path) -> dict[str, str]:
    """Both towers under ``root``; returns ScoreConfig overrides that select them."""
    root = Path(root)
    mclip = build_tiny_mclip(root / "mclip")
    image = build_tiny_open_clip(root / "open_clip")
    return {"backend": "mclip", "model": str(mclip), "image_model": f"local-dir:{image}",
            "image_pretrained": ""}
