"""Zero-shot retrieval on the val split: R@1/5/10 both ways and mean recall.

Sample i's caption and image form the only correct pair. A query's rank is the
number of candidates scoring strictly higher than its pair, so ties count in
the query's favour. Similarities are computed ``chunk`` queries at a time
(chunk x N, never N x N), so memory stays flat as the val set grows.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

KS = (1, 5, 10)


def ranks_of_pairs(queries: torch.Tensor, candidates: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """For each query i, how many candidates score higher than candidate i."""
    n = queries.shape[0]
    out = torch.empty(n, dtype=torch.long)
    for start in range(0, n, chunk):
        q = queries[start:start + chunk]
        sims = q @ candidates.T  # [chunk, N]
        idx = torch.arange(start, start + q.shape[0], device=sims.device)
        own = sims[torch.arange(q.shape[0], device=sims.device), idx].unsqueeze(1)
        out[start:start + q.shape[0]] = (sims > own).sum(dim=1).cpu()
    return out


def retrieval_metrics(image_features: torch.Tensor, text_features: torch.Tensor,
                      chunk: int = 4096) -> dict[str, float]:
    """t2i and i2t recall at 1, 5, 10 (percent) and their mean."""
    if image_features.shape[0] != text_features.shape[0]:
        raise ValueError("need one image per caption")
    metrics: dict[str, float] = {}
    t2i = ranks_of_pairs(text_features, image_features, chunk)
    i2t = ranks_of_pairs(image_features, text_features, chunk)
    for name, ranks in (("t2i", t2i), ("i2t", i2t)):
        for k in KS:
            metrics[f"{name}_R@{k}"] = 100.0 * (ranks < k).float().mean().item()
    metrics["mean_recall"] = sum(metrics.values()) / len(metrics)
    metrics["n"] = float(image_features.shape[0])
    return metrics


@torch.no_grad()
def embed(model, batches: Iterable[dict], device: torch.device,
          autocast: torch.autocast | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised image and text features of every val sample, in float32 on ``device``."""
    images, texts = [], []
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            with autocast if autocast is not None else torch.autocast("cpu", enabled=False):
                img = model.encode_image(batch["images"].to(device, non_blocking=True))
                txt = model.encode_text(batch["input_ids"].to(device),
                                        batch["attention_mask"].to(device))
            images.append(img.float())
            texts.append(txt.float())
    finally:
        model.train(was_training)
    if not images:
        raise ValueError("the val split yielded no samples")
    return torch.cat(images), torch.cat(texts)


def evaluate(model, batches: Iterable[dict], device: torch.device, chunk: int = 4096,
             autocast: torch.autocast | None = None) -> dict[str, float]:
    image_features, text_features = embed(model, batches, device, autocast)
    return retrieval_metrics(image_features, text_features, chunk)
