"""Decode worker processes (score.decode_workers): same scores, same bytes, real processes."""

from __future__ import annotations

from pathlib import Path

import pytest
from zhclip.pipeline.core.config import config_from_dict
from zhclip.pipeline.demo.synthetic import Row, make_jpeg, standard_downloads, write_download_shard
from zhclip.pipeline.score import steps as ST
from zhclip.pipeline.score.backends import build_scorer
from zhclip.pipeline.score.job import run_score
from zhclip.pipeline.score.tiny_mclip import build_tiny_models
from zhclip.pipeline.shards import downloads as DL
from zhclip.pipeline.shards import format as SH


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    return build_tiny_models(tmp_path_factory.mktemp("models"))


def _cfg(out: Path, models: dict[str, str], workers: int):
    return config_from_dict({
        "output": str(out),
        "score": {**models, "batch_size": 4, "device": "cpu", "thresholds": {},
                  "decode_workers": workers},
        "shards": {"samples_per_shard": 3, "val_fraction": 0.25},
    })


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != SH.MANIFEST_NAME}


def _downloads(folder: Path) -> None:
    standard_downloads(folder, n_shards=2, per_shard=9)
    # Faults must come back from the workers as the same reject rows.
    write_download_shard(folder, "00002", [Row("wukong_html", image=b"<html>404</html>"),
                                           Row("wukong_png", image=make_jpeg(7, fmt="PNG")),
                                           Row("wukong_ok")], seed=3)


def test_worker_processes_write_the_same_bytes_as_the_plain_path(tiny_models, tmp_path):
    for name in ("plain", "workers"):
        _downloads(tmp_path / name / SH.DOWNLOADS_DIR)
    plain = run_score(_cfg(tmp_path / "plain", tiny_models, 0), [])
    workers = run_score(_cfg(tmp_path / "workers", tiny_models, 2), [])
    assert plain["total"]["kept"] == workers["total"]["kept"] == 20
    assert plain["sources"] == workers["sources"]
    assert plain["histogram"] == workers["histogram"]
    assert _files(tmp_path / "plain" / SH.DATASET_DIR) == _files(tmp_path / "workers" / SH.DATASET_DIR)
    assert _files(tmp_path / "plain" / "rejects") == _files(tmp_path / "workers" / "rejects")


def test_shard_scorer_really_uses_processes_and_keeps_order(tiny_models, tmp_path):
    standard_downloads(tmp_path / SH.DOWNLOADS_DIR, n_shards=1, per_shard=11)
    shard = DL.list_download_shards(str(tmp_path / SH.DOWNLOADS_DIR))[0]
    results = {}
    for workers in (0, 3):
        cfg = _cfg(tmp_path, tiny_models, workers)
        scorer = ST.ShardScorer(build_scorer(cfg.score), cfg.score, 0.25, [], thresholds={})
        assert scorer.decode_workers == workers
        result, _ = scorer.score_shard(shard)
        assert (scorer._procs is not None) == (workers > 0)  # the pool path ran, not a silent fallback
        scorer.close()
        results[workers] = [(r["key"], r["score"], r[ST.IMAGE]) for r in result.kept]
    assert len(results[0]) == 11 and results[0] == results[3]


def test_split_even_keeps_order_and_never_gives_empty_slices():
    items = list(range(10))
    assert ST.split_even(items, 3) == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert ST.split_even(items[:2], 5) == [[0], [1]]
    assert ST.split_even([], 4) == [[]]


def test_auto_workers_are_the_cores_torch_leaves_free():
    import torch

    assert ST.resolve_decode_workers(5) == 5
    assert ST.resolve_decode_workers(0) == 0
    assert ST.resolve_decode_workers(None) == max(0, ST.usable_cores() - torch.get_num_threads())


def test_precomputed_backend_sends_no_preprocess_to_workers(tmp_path):
    cfg = config_from_dict({"output": str(tmp_path), "score": {"backend": "precomputed",
                                                              "decode_workers": 2}})
    scorer = ST.ShardScorer(build_scorer(cfg.score), cfg.score, 0.0, [], thresholds={})
    assert scorer.decode_workers == 2 and scorer._preprocess is None
    scorer.close()


def test_captions_are_tokenised_on_the_feeder_thread_with_equal_scores(tiny_models, tmp_path):
    import threading

    import numpy as np

    standard_downloads(tmp_path / SH.DOWNLOADS_DIR, n_shards=1, per_shard=7)
    shard = DL.list_download_shards(str(tmp_path / SH.DOWNLOADS_DIR))[0]
    cfg = _cfg(tmp_path, tiny_models, 0)
    scorer = build_scorer(cfg.score)
    samples = DL.read_download_shard(shard).samples
    images = [scorer.preprocess(ST.I.decode_image(s.image)) for s in samples]
    captions = [s.caption for s in samples]
    ahead = scorer.prepare_text(captions)
    assert len(ahead) == 2  # batch_size 4: chunks as score() cuts them
    assert np.array_equal(scorer.score(images, captions, text=ahead), scorer.score(images, captions))

    threads = []
    tokenize = scorer.text_tokenizer

    def spy(caps):
        threads.append(threading.current_thread().name)
        return tokenize(caps)

    scorer.text_tokenizer = spy
    steps = ST.ShardScorer(scorer, cfg.score, 0.25, [], thresholds={})
    result, _ = steps.score_shard(shard)
    steps.close()
    assert len(result.kept) == 7 and threads and all(t.startswith("zhclip-decode") for t in threads)
