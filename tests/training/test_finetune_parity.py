"""One zhclip fine-tuning step is cn_clip's training step.

The same tiny weights go into cn_clip's own CLIP (through ``zhclip export
--format cn_clip``) and into zhclip (through ``--init`` of that checkpoint).
cn_clip then runs its real ``cn_clip.training.train.train`` loop with AdamW over
the parameter groups its ``main.py`` builds and its ``cosine_lr`` schedule;
zhclip runs :class:`StepRunner` with the optimizer and schedule fine-tuning
builds. Loss (cn_clip's ``get_loss``) and every updated weight must agree, over
four steps that cross the warmup into the cosine, with and without gradient
accumulation, and with a temperature above the clamp. cn_clip is CUDA-only code
(``.cuda(rank)`` on every tensor); the test maps ``.cuda`` to a no-op so its loop
runs on CPU unchanged.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from zhclip.training.config import StageConfig, train_config_from_dict
from zhclip.training.convert import (
    export_to,
    read_init_weights,
    to_cn_clip_state_dict,
)
from zhclip.training.export import export_model, read_weights_file
from zhclip.training.export_fixtures import cn_clip_reference_model
from zhclip.training.finetune_init import load_init_model
from zhclip.training.fixtures import (
    all_captions,
    tiny_train_section,
    write_tiny_bert,
    write_tiny_image_tower,
)
from zhclip.training.loss import ContrastiveLoss
from zhclip.training.model import build_model
from zhclip.training.optim import cn_clip_decays, make_optimizer, make_scheduler
from zhclip.training.runtime import Runtime
from zhclip.training.step import StepPolicy, StepRunner
from zhclip.training.tokenizer import load_tokenizer
from zhclip.training.trainer import TrainState

torch.set_num_threads(1)
LR, WD, WARMUP, STEPS, BATCH = 1e-3, 0.5, 2, 4, 8
# AdamW divides by sqrt(v) + eps: with the recipes' 1e-6, a gradient that is zero up to float
# noise (the attention key bias: softmax ignores a constant per query) makes a noise step of
# up to lr on either side. eps 1e-4 (cn_clip's --eps) keeps float noise below the 1e-5 bound
# and leaves every real difference (loss, temperature, decay groups, schedule) far above it.
BETAS, EPS = (0.9, 0.98), 1e-4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    tower = write_tiny_image_tower(root / "vit", name="Tiny-ViT-par", cfg={
        "embed_dim": 32, "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
        "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}})
    bert = write_tiny_bert(root / "bert", dropout=0.0)  # no dropout: both sides see one function
    section = tiny_train_section(root, {**tower, "pretrained": None, "quick_gelu": True}, bert)
    torch.manual_seed(0)
    model = build_model(train_config_from_dict(section))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    export = export_model(model, load_tokenizer(str(bert), 16), root / "export.pt")
    spec = read_weights_file(export)["spec"]
    return export_to("cn_clip", read_weights_file(export), root / "cn"), spec


def _batches(tokenizer, n: int) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(7)
    captions = all_captions()
    out = []
    for _ in range(n):
        pick = torch.randperm(len(captions), generator=gen)[:BATCH].tolist()
        ids, mask = tokenizer([captions[i] for i in pick])
        out.append({"images": torch.randn(BATCH, 3, 32, 32, generator=gen), "input_ids": ids,
                    "attention_mask": mask})
    return out


def _cn_clip_model(ckpt: Path, spec: dict, logit_scale: float):
    model = cn_clip_reference_model(ckpt, spec)
    with torch.no_grad():
        model.logit_scale.fill_(logit_scale)
    return model


def _cn_clip_optimizer(model):
    """AdamW over the two groups cn_clip/training/main.py builds (its name rule), and its
    cosine_lr schedule."""
    from cn_clip.training.scheduler import cosine_lr

    def exclude(n: str) -> bool:
        return "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n

    named = list(model.named_parameters())
    optimizer = torch.optim.AdamW(
        [{"params": [p for n, p in named if exclude(n)], "weight_decay": 0.0},
         {"params": [p for n, p in named if not exclude(n)], "weight_decay": WD}],
        lr=LR, betas=BETAS, eps=EPS)
    return optimizer, cosine_lr(optimizer, LR, WARMUP, STEPS)


def _cn_clip_args(accum: int) -> SimpleNamespace:
    return SimpleNamespace(
        accum_freq=accum, precision="fp32", distillation=False, aggregate=False, mask_ratio=0,
        max_steps=STEPS, log_interval=1, val_data=None, valid_step_interval=None,
        should_save=False, save_step_frequency=-1, freeze_vision=False, vision_model="ViT-B-16",
        report_training_batch_acc=False, local_device_rank=0, rank=0, world_size=1,
        use_flash_attention=False)


class _Loader(list):
    """What cn_clip's train() reads from data["train"]: micro-batches and their count."""

    @property
    def num_batches(self) -> int:
        return len(self)

    num_samples = STEPS * BATCH


@pytest.fixture()
def cpu_cuda(monkeypatch):
    """cn_clip moves every tensor and loss with .cuda(rank): make that a no-op."""
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    monkeypatch.setattr(torch.nn.Module, "cuda", lambda self, *a, **k: self)


def _zhclip_run(ckpt: Path, logit_scale: float, batches, accum: int, scale_grad_times: int = 1):
    model, _, _ = load_init_model(ckpt, 16)
    with torch.no_grad():
        model.logit_scale.fill_(logit_scale)
    if scale_grad_times > 1:
        model.logit_scale.register_hook(lambda grad: grad * scale_grad_times)
    model.unlock_image_tower()
    model.train()
    stage = StageConfig(steps=STEPS, batch_size=BATCH, lr=LR, warmup=WARMUP, weight_decay=WD,
                        beta1=BETAS[0], beta2=BETAS[1], eps=EPS)
    optimizer = make_optimizer(model, stage, "cn_clip")
    scheduler = make_scheduler(optimizer, stage)
    rt = Runtime(torch.device("cpu"), 0, 0, 1, "fp32", None)
    stepper = StepRunner(model, model, optimizer, scheduler, torch.amp.GradScaler("cuda", enabled=False),
                         ContrastiveLoss(), rt, StepPolicy(accum_steps=accum))
    state = TrainState(stage=2)
    lrs = []
    for batch in batches:
        lrs.append(optimizer.param_groups[0]["lr"])
        stepper.step(batch, state)
        state.step += 1
    return model, lrs


def _cn_clip_run(ckpt: Path, spec: dict, logit_scale: float, batches, accum: int):
    from cn_clip.training.train import train

    model = _cn_clip_model(ckpt, spec, logit_scale)
    optimizer, scheduler = _cn_clip_optimizer(model)
    lrs = []

    def recording(step):
        lrs.append(scheduler_fn(step))

    scheduler_fn = scheduler
    micro = _Loader()
    for b in batches:
        for img, ids in zip(b["images"].chunk(accum), b["input_ids"].chunk(accum), strict=True):
            micro.append((img, ids, torch.zeros(len(ids), dtype=torch.long)))
    data = {"train": SimpleNamespace(dataloader=micro, sampler=None)}
    # DataParallel without devices calls the module itself, and gives train() its .module
    train(torch.nn.DataParallel(model, device_ids=[]), data, 0, optimizer, None, recording,
          _cn_clip_args(accum), 0)
    return model, lrs


def _assert_same_weights(ours, theirs, before, skip: tuple[str, ...] = ()) -> None:
    """Every tensor within 1e-5 relative (L2), no single element off by 1% of one step, and
    every weight moved."""
    from zhclip.training.convert import to_cn_clip_state_dict

    mine = to_cn_clip_state_dict({k: v.detach() for k, v in ours.state_dict().items()})
    ref = {k: v.detach() for k, v in theirs.state_dict().items()}
    assert set(mine) == {k for k in ref if not k.startswith("bert.pooler.")}
    for name, value in mine.items():
        if name in skip:
            continue
        diff, target = value - ref[name], ref[name]
        assert diff.abs().max().item() <= 1e-2 * LR, name
        assert diff.norm().item() <= 1e-5 * target.norm().item(), name
        assert not torch.equal(value, before[name]), f"{name} did not move"


def test_the_loss_is_cn_clips_get_loss(checkpoint, cpu_cuda):
    from cn_clip.training.train import get_loss

    ckpt, spec = checkpoint
    model, tokenizer, _ = load_init_model(ckpt, 16)
    batch = _batches(tokenizer, 1)[0]
    theirs = _cn_clip_model(ckpt, spec, 3.1)
    with torch.no_grad():
        model.logit_scale.fill_(3.1)
    ce = torch.nn.CrossEntropyLoss()
    ref, _ = get_loss(theirs, batch["images"], batch["input_ids"], ce, ce, _cn_clip_args(1))
    ours = ContrastiveLoss()(*model(batch["images"], batch["input_ids"], batch["attention_mask"]))
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)


@pytest.mark.parametrize(("accum", "logit_scale"), [(1, 3.1), (1, 4.7), (2, 3.1), (4, 3.1)])
def test_steps_update_the_weights_as_cn_clip_does(checkpoint, cpu_cuda, accum, logit_scale, caplog):
    ckpt, spec = checkpoint
    _, tokenizer, _ = load_init_model(ckpt, 16)
    batches = _batches(tokenizer, STEPS)
    before = to_cn_clip_state_dict(read_init_weights(ckpt))
    ours, our_lrs = _zhclip_run(ckpt, logit_scale, batches, accum)
    with caplog.at_level(logging.INFO):
        theirs, their_lrs = _cn_clip_run(ckpt, spec, logit_scale, batches, accum)
    # cn_clip sets the lr before a step, zhclip's scheduler after the previous one
    assert our_lrs == pytest.approx(their_lrs[::accum][:STEPS] if accum > 1 else their_lrs)
    assert our_lrs == pytest.approx([LR / 2, LR, LR, LR / 2])
    clamped = logit_scale > 4.61
    if clamped:
        # both clamp the temperature at 100 after the first step; cn_clip writes ln 100 as
        # 4.6052, zhclip uses math.log(100) = 4.605170..., so the scales stay that far apart
        # (an unclamped one would still be near 4.7); the towers agree
        assert max(ours.logit_scale.item(), theirs.logit_scale.item()) <= 4.6052 + 1e-6
        gap = 4.6052 - math.log(100)
        assert abs(ours.logit_scale.item() - theirs.logit_scale.item()) <= gap + 1e-6
    if accum == 1:
        _assert_same_weights(ours, theirs, before, skip=("logit_scale",) if clamped else ())
    else:
        # the one difference on purpose: cn_clip's accumulation adds the temperature's
        # gradient once per micro-batch, accum times the full batch's; zhclip takes it once.
        # The towers agree as they are; the temperature once zhclip's gradient is scaled so.
        _assert_same_weights(ours, theirs, before, skip=("logit_scale",))
        scaled, _ = _zhclip_run(ckpt, logit_scale, batches, accum, scale_grad_times=accum)
        _assert_same_weights(scaled, theirs, before)


def test_zhclip_pretraining_groups_would_differ(checkpoint):
    """The name rule matters: zhclip's own pretraining rule exempts BERT's LayerNorm scales and
    the ViT's positional/class embeddings, which cn_clip decays."""
    ckpt, _ = checkpoint
    model, _, _ = load_init_model(ckpt, 16)
    from zhclip.training.optim import decays

    differ = sorted(n for n, p in model.named_parameters() if decays(n, p) != cn_clip_decays(n, p))
    assert "image.positional_embedding" in differ and "image.class_embedding" in differ
    assert any(n.endswith("LayerNorm.weight") for n in differ)
