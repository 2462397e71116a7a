"""Symmetric contrastive (InfoNCE) loss over the global batch.

Every rank all-gathers the features of the other ranks so that each caption is
contrasted with every image of the global batch (the paper's 32768). The gather
is differentiable: its backward sums the gradient each rank computed for a slice
and hands every rank the gradient of its own (local) slice. Together with DDP's
gradient averaging this gives exactly the gradient of the loss on the
concatenated batch, which the tests check.

``local_loss`` computes only the rows of the local samples (B x N instead of
N x N logits), which saves memory on large global batches; its mean over ranks
equals the global loss and, with the differentiable gather, so do the gradients.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward returns the summed gradient of the local slice.

    Written with all_reduce rather than reduce_scatter because gloo (CPU) has
    no reduce_scatter.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        world = dist.get_world_size()
        ctx.rank, ctx.rows = dist.get_rank(), tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.rows
        return grad[start:start + ctx.rows]


def gather_features(features: torch.Tensor) -> torch.Tensor:
    """Concatenate ``features`` of all ranks in rank order (identity on one process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return features
    return _GatherWithGrad.apply(features)


class ContrastiveLoss(nn.Module):
    """CLIP loss: mean of image->text and text->image cross-entropy."""

    def __init__(self, local_loss: bool = False):
        super().__init__()
        self.local_loss = local_loss

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor,
                logit_scale: torch.Tensor) -> torch.Tensor:
        all_images = gather_features(image_features)
        all_texts = gather_features(text_features)
        if self.local_loss:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
            n = image_features.shape[0]
            labels = torch.arange(n, device=image_features.device) + rank * n
            logits_i2t = logit_scale * image_features @ all_texts.T
            logits_t2i = logit_scale * text_features @ all_images.T
        else:
            labels = torch.arange(all_images.shape[0], device=image_features.device)
            logits_i2t = logit_scale * all_images @ all_texts.T
            logits_t2i = logits_i2t.T
        return (F.cross_entropy(logits_i2t.float(), labels)
                + F.cross_entropy(logits_t2i.float(), labels)) / 2
