"""Retrieval recall: R@1/5/10 both ways and mean recall, on any ground truth.

A query may have several correct candidates (a benchmark image has about five
captions; a caption may describe several images). A query's rank is the number
of *wrong* candidates scoring at least as high as its best correct one, so ties
count against the query: a collapsed model whose scores are all equal ranks
every query behind all wrong candidates and scores 0, never above chance (the
old rule, "strictly higher", gave such a model 100). A query is a hit at K when
its rank is below K, which is exactly "some correct candidate is in the top K"
whenever the scores have no ties, the rule Chinese-CLIP's evaluation script
applies to its top-K prediction lists.

Similarities are computed ``chunk`` queries at a time (chunk x N, never N x N),
so memory stays flat as the set grows. Features that are NaN or infinite are an
error: NaN compares false with everything, so it used to rank every query first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch

KS = (1, 5, 10)
# At most this many similarities live at once (256 MB of float32), whatever ``chunk`` says.
MAX_BLOCK = 1 << 26
# Scores this close to the best correct one count as ties (float32 matmuls of
# identical features can differ in the last bits depending on the row's position).
TIE_TOLERANCE = 1e-6
# Images or captions per forward pass when a caller does not say.
EMBED_BATCH = 128


def check_finite(name: str, features: torch.Tensor) -> None:
    """Raise ValueError naming the first NaN/inf row, so a broken model never scores."""
    finite = torch.isfinite(features)
    if bool(finite.all()):
        return
    bad_rows = (~finite).reshape(features.shape[0], -1).any(dim=1)
    kind = "NaN" if bool(torch.isnan(features).any()) else "infinite"
    raise ValueError(f"{name} features contain {kind} values ({int(bad_rows.sum())} of "
                     f"{features.shape[0]} rows, first at row {int(bad_rows.nonzero()[0, 0])}): "
                     "the model diverged or its weights are broken")


def invert(positives: Sequence[Sequence[int]], n_candidates: int) -> list[list[int]]:
    """Ground truth the other way round: candidate j -> the queries that list j."""
    out: list[list[int]] = [[] for _ in range(n_candidates)]
    for q, cands in enumerate(positives):
        for c in cands:
            out[c].append(q)
    return out


def _positive_mask(positives: Sequence[Sequence[int]], start: int, stop: int, n: int,
                   device: torch.device) -> torch.Tensor:
    mask = torch.zeros(stop - start, n, dtype=torch.bool, device=device)
    rows = [r for r, q in enumerate(range(start, stop)) for _ in positives[q]]
    cols = [c for q in range(start, stop) for c in positives[q]]
    if rows:
        mask[torch.tensor(rows, device=device), torch.tensor(cols, device=device)] = True
    return mask


def ranks(queries: torch.Tensor, candidates: torch.Tensor, positives: Sequence[Sequence[int]],
          chunk: int = 4096) -> torch.Tensor:
    """For each query, how many wrong candidates score >= its best correct candidate."""
    n_q, n_c = queries.shape[0], candidates.shape[0]
    if len(positives) != n_q:
        raise ValueError(f"ground truth lists {len(positives)} queries, features have {n_q}")
    empty = [q for q, p in enumerate(positives) if not p]
    if empty:
        raise ValueError(f"{len(empty)} queries have no correct candidate (first: row {empty[0]})")
    out = torch.empty(n_q, dtype=torch.long)
    chunk = max(1, min(chunk, MAX_BLOCK // max(1, n_c)))
    for start in range(0, n_q, chunk):
        stop = min(start + chunk, n_q)
        sims = queries[start:stop] @ candidates.T  # [chunk, N]
        pos = _positive_mask(positives, start, stop, n_c, sims.device)
        best = sims.masked_fill(~pos, float("-inf")).max(dim=1, keepdim=True).values
        out[start:stop] = ((sims >= best - TIE_TOLERANCE) & ~pos).sum(dim=1).cpu()
    return out


def ranks_of_pairs(queries: torch.Tensor, candidates: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Ranks when query i's only correct candidate is candidate i (the val shards)."""
    return ranks(queries, candidates, [[i] for i in range(queries.shape[0])], chunk)


def recall_at(rank: torch.Tensor, ks: Iterable[int] = KS) -> dict[int, float]:
    """Percent of queries whose rank is below k, for each k."""
    n = max(1, rank.numel())  # counted in Python ints, so 1/24 is exact to float64, not float32
    return {k: 100.0 * int((rank < k).sum()) / n for k in ks}


def retrieval_metrics(image_features: torch.Tensor, text_features: torch.Tensor,
                      text_to_images: Sequence[Sequence[int]] | None = None,
                      chunk: int = 4096) -> dict[str, float]:
    """t2i and i2t recall at 1, 5, 10 (percent), their mean, and the set's size.

    ``text_to_images[t]`` lists the rows of ``image_features`` that caption ``t``
    describes; without it, caption i belongs to image i only.
    """
    check_finite("image", image_features)
    check_finite("text", text_features)
    if text_to_images is None:
        if image_features.shape[0] != text_features.shape[0]:
            raise ValueError("without a ground truth, need one image per caption")
        text_to_images = [[i] for i in range(text_features.shape[0])]
    image_to_texts = invert(text_to_images, image_features.shape[0])
    # an image no caption describes is a distractor for t2i, not an i2t query
    # (Chinese-CLIP's i2t ground truth is built from the captions the same way)
    rows = [i for i, texts in enumerate(image_to_texts) if texts]
    i2t = ranks(image_features[rows], text_features, [image_to_texts[i] for i in rows], chunk)
    metrics: dict[str, float] = {}
    for name, rank in (("t2i", ranks(text_features, image_features, text_to_images, chunk)),
                       ("i2t", i2t)):
        for k, value in recall_at(rank).items():
            metrics[f"{name}_r{k}"] = value
    metrics["mean_recall"] = sum(metrics.values()) / len(metrics)
    metrics["n_images"] = float(image_features.shape[0])
    metrics["n_texts"] = float(text_features.shape[0])
    return metrics


def top_k(queries: torch.Tensor, candidates: torch.Tensor, k: int, chunk: int = 4096) -> torch.Tensor:
    """Indices [Q, k] of each query's k best candidates, best first (for prediction files)."""
    k = min(k, candidates.shape[0])
    parts = [(queries[s:s + chunk] @ candidates.T).topk(k, dim=1).indices.cpu()
             for s in range(0, queries.shape[0], chunk)]
    return torch.cat(parts) if parts else torch.empty(0, k, dtype=torch.long)


@contextmanager
def eval_mode(model) -> Iterator[None]:
    """The model in eval mode (dropout off, BatchNorm frozen) for the block, then as it was."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def embed(model, batches: Iterable[dict], device: torch.device,
          autocast: torch.autocast | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised image and text features of every val sample, in float32 on ``device``."""
    images, texts = [], []
    with eval_mode(model):
        for batch in batches:
            with autocast if autocast is not None else torch.autocast("cpu", enabled=False):
                img = model.encode_image(batch["images"].to(device, non_blocking=True))
                txt = model.encode_text(batch["input_ids"].to(device),
                                        batch["attention_mask"].to(device))
            images.append(img.float())
            texts.append(txt.float())
    if not images:
        raise ValueError("the val split yielded no samples")
    return torch.cat(images), torch.cat(texts)


def evaluate(model, batches: Iterable[dict], device: torch.device, chunk: int = 4096,
             autocast: torch.autocast | None = None) -> dict[str, float]:
    """Recall on the val shards, where each sample's caption and image form one pair."""
    image_features, text_features = embed(model, batches, device, autocast)
    return retrieval_metrics(image_features, text_features, chunk=chunk)


# ---- a retrieval benchmark (zhclip eval, and the trainer when train.eval_data is set) ------------


def _no_autocast() -> torch.autocast:
    return torch.autocast("cpu", enabled=False)


@torch.no_grad()
def embed_image_stream(model, transform: Callable, images: Iterable, device="cpu",
                       batch_size: int = EMBED_BATCH, autocast: torch.autocast | None = None
                       ) -> torch.Tensor:
    """L2-normalised features [N, D] (float32, on the CPU) of a stream of PIL images.

    The one image-embedding helper: evaluation, the scorer's checks and the
    exporters' equality tests all call it, so they cannot drift apart. Images of
    any mode are converted to RGB first (the transform expects three channels).
    """
    feats, batch = [], []

    def flush() -> None:
        with autocast if autocast is not None else _no_autocast():
            feats.append(model.encode_image(torch.stack(batch).to(device)).float().cpu())
        batch.clear()

    for image in images:
        batch.append(transform(image if image.mode == "RGB" else image.convert("RGB")))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if not feats:
        raise ValueError("no images to embed")
    return torch.cat(feats)


@torch.no_grad()
def embed_captions(model, tokenizer, texts: Sequence[str], device="cpu",
                   batch_size: int = EMBED_BATCH, autocast: torch.autocast | None = None
                   ) -> torch.Tensor:
    """L2-normalised features [N, D] (float32, on the CPU) of captions, ``batch_size`` at a time."""
    feats = []
    for start in range(0, len(texts), batch_size):
        ids, mask = tokenizer(list(texts[start:start + batch_size]))
        with autocast if autocast is not None else _no_autocast():
            feats.append(model.encode_text(ids.to(device), mask.to(device)).float().cpu())
    if not feats:
        raise ValueError("no captions to embed")
    return torch.cat(feats)


def evaluate_benchmark(model, tokenizer, transform: Callable, bench, device, batch_size: int,
                       chunk: int = 4096, autocast: torch.autocast | None = None) -> dict[str, float]:
    """Recall on a retrieval benchmark (a ``benchmarks.RetrievalSet``), with all its captions.

    What `zhclip eval` reports for an exported model, computed on the live one,
    so the stage switch can watch a downstream benchmark as the paper's did.
    """
    with eval_mode(model):
        image_features = embed_image_stream(model, transform, bench.read_images(), device, batch_size, autocast)
        text_features = embed_captions(model, tokenizer, bench.texts, device, batch_size, autocast)
    if image_features.shape[0] != len(bench.image_ids):
        raise ValueError(f"read {image_features.shape[0]} images, the index lists {len(bench.image_ids)}")
    return retrieval_metrics(image_features, text_features, bench.text_to_images, chunk)
