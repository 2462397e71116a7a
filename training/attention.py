"""Which attention kernel the towers run: ``torch.nn.functional.scaled_dot_product_attention``
(the default), or the explicit softmax(QK^T)V ("eager") to compare against.

SDPA is what lets CUDA pick FlashAttention / memory-efficient kernels, where
cn_clip's optional FlashAttention path gets its speed-up on ViT-B/16. Both towers
already reach it by default and zhclip pins that: the BERT tower is built with
transformers' ``attn_implementation="sdpa"`` (``BertSdpaSelfAttention``), and
open_clip's ViT blocks call ``nn.MultiheadAttention`` with ``need_weights=False``,
which torch routes to SDPA (a ResNet's attention pool likewise). The eager path
(BERT's ``BertSelfAttention``; the ViT blocks asking for attention weights, which
makes torch compute them explicitly) exists for the feature-equality test and the
speed figure in ``bench/train.py``.
"""

from __future__ import annotations

import types
from typing import Literal

import torch
from open_clip.transformer import ResidualAttentionBlock
from transformers import BertConfig, BertModel

SDPA, EAGER = "sdpa", "eager"
Attention = Literal["sdpa", "eager"]


def bert_config(config: BertConfig, attention: Attention = SDPA) -> BertConfig:
    """``config`` set to build the given attention classes."""
    config._attn_implementation = attention
    return config


def _eager_block_attention(self, q_x, k_x=None, v_x=None, attn_mask=None):
    k_x = q_x if k_x is None else k_x
    v_x = q_x if v_x is None else v_x
    mask = attn_mask.to(q_x.dtype) if attn_mask is not None else None
    # asking for the per-head weights makes torch take its explicit matmul-softmax path
    return self.attn(q_x, k_x, v_x, need_weights=True, average_attn_weights=False,
                     attn_mask=mask)[0]


def set_attention(model: torch.nn.Module, attention: Attention) -> int:
    """Switch a ChineseCLIP's towers to ``attention``; returns the attention layers switched.

    BERT's attention classes are chosen when it is built, so the text tower is rebuilt
    with the same weights; the ViT blocks get their attention call replaced.
    """
    bert = model.text.bert
    if bert.config._attn_implementation != attention:
        rebuilt = BertModel(bert_config(BertConfig.from_dict(bert.config.to_dict()), attention),
                            add_pooling_layer=False)
        rebuilt.load_state_dict(bert.state_dict())
        rebuilt.to(next(bert.parameters()).device).train(bert.training)
        model.text.bert = rebuilt
    switched = len(model.text.bert.encoder.layer)
    for block in model.image.modules():
        if isinstance(block, ResidualAttentionBlock):
            if attention == EAGER:
                block.attention = types.MethodType(_eager_block_attention, block)
            else:
                block.__dict__.pop("attention", None)  # back to the class's SDPA call
            switched += 1
    return switched
