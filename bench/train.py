"""Training-step throughput against open_clip's own training loop, side by side.

    python bench/train.py                  # CPU: small ViT + small BERT, fp32
    python bench/train.py --steps 6 --batch-size 16
    python bench/train.py --cuda           # ViT-B/16 + RoBERTa-wwm-base shapes, bf16

Figures, in one process, on the same pre-built batch (no data loading on
either side, so the models and the loops are compared, not JPEG decoding):

- zhclip stage 1: ``Trainer._step`` with the image tower locked (LiT);
- zhclip stage 2: ``Trainer._step`` with everything trained;
- open_clip: ``open_clip_train.train.train_one_epoch`` on an open_clip CLIP with
  identical towers: the same vision config, and the same BERT through open_clip's
  Hugging Face text tower (``text_cfg.hf_model_name`` = the local BERT folder,
  ``[CLS]`` pooling, linear projection), on the same images and token ids;
- zhclip stage 2 with eager attention: both towers switched from
  ``scaled_dot_product_attention`` to the explicit softmax(QK^T)V path
  (``training.attention.set_attention``), same weights, same batch.

Printed ratios: zhclip stage 2 / open_clip (target >= 1.0 on CUDA), stage 1 /
stage 2 (target >= 1.8 on CUDA), and SDPA / eager attention for stage 2
(``--only sdpa`` times just that pair). Weights are random; towers are built from
configs through the same loaders as real weights; nothing is downloaded.
Runs alternate (A B C A B C ...) and the median is reported, because this
machine's cores are shared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from zhclip.training.attention import EAGER, SDPA, set_attention  # noqa: E402
from zhclip.training.fixtures import all_captions, write_shape_dataset, write_vocab  # noqa: E402

SMALL_VIT = {"image_size": 224, "layers": 4, "width": 256, "patch_size": 32, "head_width": 64}
SMALL_BERT = {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
              "intermediate_size": 1024}
BASE_BERT = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
             "intermediate_size": 3072}  # RoBERTa-wwm-ext base


def write_towers(root: Path, cuda: bool) -> tuple[dict, Path, dict]:
    """(train.image mapping, BERT folder, open_clip vision_cfg) for the chosen size."""
    from transformers import BertConfig

    bert_shape = BASE_BERT if cuda else SMALL_BERT
    bert_dir = root / "bert"
    BertConfig(vocab_size=21128, max_position_embeddings=512, **bert_shape).save_pretrained(bert_dir)
    write_vocab(bert_dir / "vocab.txt")
    if cuda:
        import open_clip

        cfg = open_clip.get_model_config("ViT-B-16")
        return {"model": "ViT-B-16"}, bert_dir, {"embed_dim": cfg["embed_dim"],
                                                  "vision_cfg": cfg["vision_cfg"]}
    cfg = {"embed_dim": 256, "vision_cfg": SMALL_VIT,
           "text_cfg": {"context_length": 50, "vocab_size": 21128, "width": 256, "heads": 4,
                        "layers": 4}}
    path = root / "Bench-ViT-S.json"
    path.write_text(json.dumps(cfg), encoding="utf-8")
    return ({"model": "Bench-ViT-S", "config_file": str(path)}, bert_dir,
            {"embed_dim": 256, "vision_cfg": SMALL_VIT})


def zhclip_trainer(root: Path, image: dict, bert: Path, batch: int, cuda: bool):
    from zhclip.training.config import train_config_from_dict
    from zhclip.training.runtime import setup_runtime
    from zhclip.training.trainer import Trainer

    write_shape_dataset(root / "dataset", n_train=8, n_val=4, per_shard=8, size=64)
    section = {
        "image": image, "text": {"model": str(bert), "random_init": True},
        "tokenizer": str(bert / "vocab.txt"), "context_length": 50,
        "data": {"path": str(root / "dataset"), "workers": 0},
        "stage1": {"steps": 1000, "batch_size": batch, "warmup": 10},
        "stage2": {"steps": 1000, "batch_size": batch, "warmup": 10},
        "output": str(root / "train"), "precision": "bf16" if cuda else "fp32",
        "device": "cuda" if cuda else "cpu",
        # speed, not accuracy: small synthetic images feed the real-size towers
        "allow_upscale": True,
    }
    return Trainer(train_config_from_dict(section), setup_runtime(section["device"],
                                                                  section["precision"]))


def make_batch(trainer, batch: int, device: torch.device) -> dict:
    caps = (all_captions() * (batch // len(all_captions()) + 1))[:batch]
    ids, mask = trainer.tokenizer(caps)
    size = trainer.model.spec["image_size"]
    return {"images": torch.randn(batch, 3, size, size, device=device),
            "input_ids": ids.to(device), "attention_mask": mask.to(device)}


class _Batches:
    """What open_clip's train_one_epoch expects of ``data['train'].dataloader``."""

    def __init__(self, images, texts, n):
        self.images, self.texts, self.n = images, texts, n
        self.num_batches, self.num_samples = n, n * images.shape[0]

    def __iter__(self):
        for _ in range(self.n):
            yield self.images, self.texts


def open_clip_setup(vision: dict, bert: Path, batch: dict, device: torch.device, cuda: bool):
    """open_clip's CLIP with the same towers: the vision config zhclip builds, and the same
    BERT (from the same local config, through open_clip's HF adapter with zhclip's [CLS]
    pooling and linear projection), fed the same images and token ids."""
    from open_clip.loss import ClipLoss
    from open_clip.model import CustomTextCLIP

    text_cfg = {"hf_model_name": str(bert), "hf_tokenizer_name": str(bert),
                "hf_model_pretrained": False, "hf_proj_type": "linear",
                "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 50}
    model = CustomTextCLIP(vision["embed_dim"], vision["vision_cfg"], text_cfg,
                           output_dict=True).to(device)
    params = [{"params": [p for n, p in model.named_parameters() if p.ndim >= 2 and "logit" not in n],
               "weight_decay": 1e-3},
              {"params": [p for n, p in model.named_parameters() if p.ndim < 2 or "logit" in n],
               "weight_decay": 0.0}]
    opt = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.98), eps=1e-6, fused=cuda or None)
    args = SimpleNamespace(
        device=str(device), precision="amp_bf16" if cuda else "fp32", distill=False, accum_freq=1,
        skip_scheduler=True, horovod=False, grad_clip_norm=None, log_every_n_steps=10**9,
        world_size=1, rank=0, local_rank=0, batch_size=batch["images"].shape[0], wandb=False,
        save_logs=False, distributed=False, val_frequency=0, delete_previous_checkpoint=False,
    )
    # open_clip's HF adapter masks attention by pad_token_id (0, [PAD]), as zhclip's mask does
    return model, ClipLoss(), opt, batch["images"], batch["input_ids"], args


def time_zhclip(trainer, stage: int, batch: dict, steps: int, cuda: bool) -> float:
    trainer._enter_stage(stage)
    trainer._step(batch)  # warm-up (allocator, autotuning)
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer._step(batch)
    if cuda:
        torch.cuda.synchronize()
    return steps * batch["images"].shape[0] / (time.perf_counter() - t0)


def time_open_clip(setup, steps: int, cuda: bool) -> float:
    from open_clip_train.train import train_one_epoch

    model, loss, opt, images, texts, args = setup
    data = {"train": SimpleNamespace(dataloader=_Batches(images, texts, 1), set_epoch=lambda e: None)}
    train_one_epoch(model, data, loss, 0, opt, None, None, None, args)  # warm-up
    data["train"].dataloader = _Batches(images, texts, steps)
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    train_one_epoch(model, data, loss, 0, opt, None, None, None, args)
    if cuda:
        torch.cuda.synchronize()
    return steps * images.shape[0] / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cuda", action="store_true", help="ViT-B/16 + RoBERTa-base shapes, bf16")
    ap.add_argument("--batch-size", type=int, default=None, help="default 8 (CPU), 256 (CUDA)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per run (default 3 / 20)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", choices=("all", "sdpa"), default="all",
                    help="sdpa: time only stage 2 with SDPA against eager attention")
    a = ap.parse_args()
    if a.cuda and not torch.cuda.is_available():
        print("--cuda: no CUDA device here; not run", file=sys.stderr)
        return 2
    torch.set_num_threads(a.threads)
    batch = a.batch_size or (256 if a.cuda else 8)
    steps = a.steps or (20 if a.cuda else 3)
    device = torch.device("cuda" if a.cuda else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        image, bert, vision = write_towers(root, a.cuda)
        trainer = zhclip_trainer(root, image, bert, batch, a.cuda)
        data = make_batch(trainer, batch, device)
        oc = open_clip_setup(vision, bert, data, device, a.cuda)
        runs: dict[str, list[float]] = {"zhclip_stage2": [], "stage2_eager": []}
        if a.only == "all":
            runs.update({"zhclip_stage1": [], "open_clip": []})
        for _ in range(a.repeats):
            if a.only == "all":
                runs["zhclip_stage1"].append(time_zhclip(trainer, 1, data, steps, a.cuda))
            runs["zhclip_stage2"].append(time_zhclip(trainer, 2, data, steps, a.cuda))
            set_attention(trainer.model, EAGER)  # the stage is re-entered: a fresh optimizer
            runs["stage2_eager"].append(time_zhclip(trainer, 2, data, steps, a.cuda))
            set_attention(trainer.model, SDPA)
            if a.only == "all":
                runs["open_clip"].append(time_open_clip(oc, steps, a.cuda))
    med = {k: statistics.median(v) for k, v in runs.items()}
    mode = "CUDA bf16 ViT-B/16 + RoBERTa-base" if a.cuda else "CPU fp32 small ViT/32 + 4-layer BERT-256"
    print(f"{mode}, batch {batch}, {steps} steps x {a.repeats} repeats (median samples/s)")
    for k, v in med.items():
        print(f"  {k:14s} {v:10.1f}   runs: {', '.join(f'{x:.1f}' for x in runs[k])}")
    if a.only == "all":
        print(f"ratio zhclip stage 2 / open_clip: {med['zhclip_stage2'] / med['open_clip']:.2f}x")
        print(f"ratio zhclip stage 1 / stage 2:   {med['zhclip_stage1'] / med['zhclip_stage2']:.2f}x")
    # each repeat times the pair back to back, so the ratio of a pair sees the same machine
    pairs = [s / e for s, e in zip(runs["zhclip_stage2"], runs["stage2_eager"], strict=True)]
    print(f"ratio SDPA / eager attention (stage 2): {statistics.median(pairs):.2f}x "
          f"(median of {len(pairs)} back-to-back pairs: {', '.join(f'{r:.2f}' for r in pairs)})")
    if a.cuda:
        print(f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
