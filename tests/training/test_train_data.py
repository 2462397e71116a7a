"""The training data stream over real shards: listing, splitting, determinism, resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from zhclip.training.data import (
    DataPosition,
    StreamSpec,
    check_shard_count,
    eval_loader,
    eval_transform,
    list_shards,
    train_loader,
    train_transform,
)
from zhclip.training.fixtures import write_shape_dataset, write_vocab  # noqa: E402
from zhclip.training.tokenizer import load_tokenizer

torch.set_num_threads(1)
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_shape_dataset(root / "dataset", n_train=256, n_val=40, per_shard=64, size=40)
    return root / "dataset"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_tokenizer(str(write_vocab(tmp_path_factory.mktemp("tok") / "vocab.txt")), 16)


def _loader(dataset, tokenizer, position, **kw):
    spec = StreamSpec(shards=list_shards(str(dataset), "train"), batch_size=kw.pop("batch_size", 16),
                      seed=kw.pop("seed", 7), shuffle_buffer=kw.pop("shuffle_buffer", 32), **kw)
    tf = train_transform(32, MEAN, STD, auto_augment=True)
    return train_loader(spec, tf, tokenizer, position)


def _take(loader, n, position=None):
    out = []
    for batch in loader:
        if position is not None:
            position.update(batch["position"])
        out.append(batch)
        if len(out) == n:
            return out
    raise AssertionError("stream ended")


def test_tokenizer_wraps_caption_in_cls_sep_and_pads(tokenizer):
    ids, mask = tokenizer(["左上的红色圆形", "右下的" + "蓝色方形" * 10])
    tok = tokenizer.tokenizer
    assert ids.shape == mask.shape == (2, 16)
    assert tok.convert_ids_to_tokens(ids[0, :9].tolist()) == ["[CLS]", *"左上的红色圆形", "[SEP]"]
    assert ids[0, 9:].eq(tok.pad_token_id).all() and mask[0].sum() == 9
    assert ids[1, -1] == tok.sep_token_id and mask[1].all()  # truncated, still closed by [SEP]


def test_shards_from_manifest_pattern_and_glob(dataset, tmp_path):
    train = list_shards(str(dataset), "train")
    assert [Path(s.url).name for s in train] == [f"train-{i:06d}.tar" for i in range(4)]
    assert sum(s.samples for s in train) == 256
    assert len(list_shards(str(dataset), "val")) == 1
    pattern = list_shards(str(dataset), "train", "train-{000001..000002}.tar")
    assert [Path(s.url).name for s in pattern] == ["train-000001.tar", "train-000002.tar"]
    assert Path(pattern[0].url).parent == dataset
    # without a manifest the tars are globbed only when asked (train.data.glob)
    bare = tmp_path / "bare"
    bare.mkdir()
    for s in train[:2]:
        (bare / Path(s.url).name).symlink_to(s.url)
    with pytest.raises(FileNotFoundError, match="train.data.glob"):
        list_shards(str(bare), "train")
    assert len(list_shards(str(bare), "train", allow_glob=True)) == 2
    with pytest.raises(FileNotFoundError, match="no 'val' shards"):
        list_shards(str(bare), "val", allow_glob=True)


def test_too_few_shards_fail_early_unless_resampled(dataset, tokenizer):
    shards = list_shards(str(dataset), "train")
    with pytest.raises(ValueError, match=r"4 training shards cannot feed 3 workers x 2 ranks"):
        check_shard_count(shards, workers=3, world_size=2, resampled=False)
    check_shard_count(shards, workers=3, world_size=2, resampled=True)
    with pytest.raises(ValueError, match="resampled"):
        _loader(dataset, tokenizer, DataPosition(5), workers=5)


def test_one_epoch_covers_every_sample_once_across_ranks(dataset, tokenizer):
    keys = []
    for rank in (0, 1):
        batches = _take(_loader(dataset, tokenizer, DataPosition(0), rank=rank, world_size=2,
                                batch_size=32), 4)
        keys.append([k for b in batches for k in b["keys"]])
        assert all(b["position"][1] == 0 for b in batches)  # all from epoch 0
    assert not set(keys[0]) & set(keys[1])
    assert len(set(keys[0]) | set(keys[1])) == 256


def test_workers_split_shards_and_epochs_continue(dataset, tokenizer):
    batches = _take(_loader(dataset, tokenizer, DataPosition(2), workers=2, batch_size=32), 10)
    first_epoch = [k for b in batches[:8] for k in b["keys"]]
    assert len(set(first_epoch)) == 256  # 2 workers x 2 shards, every sample once
    assert [b["position"][0] for b in batches] == [0, 1] * 5  # round-robin over workers
    assert batches[8]["position"][1] == 1  # the stream goes on into epoch 1


@pytest.mark.parametrize("workers", [0, 2])
def test_resumed_stream_continues_with_the_same_batches(dataset, tokenizer, workers):
    full = _take(_loader(dataset, tokenizer, DataPosition(workers), workers=workers), 7)
    position = DataPosition(workers)
    _take(_loader(dataset, tokenizer, position, workers=workers), 3, position)
    resumed = _take(_loader(dataset, tokenizer, DataPosition(workers, position.state()),
                            workers=workers), 4)
    for a, b in zip(full[3:], resumed, strict=True):
        assert a["keys"] == b["keys"]
        assert torch.equal(a["images"], b["images"])  # same crops: augmentation is seeded
        assert torch.equal(a["input_ids"], b["input_ids"])
    other_seed = _take(_loader(dataset, tokenizer, DataPosition(workers), workers=workers,
                               seed=8), 1)
    assert other_seed[0]["keys"] != full[0]["keys"]


def test_resampled_stream_draws_shards_with_replacement(dataset, tokenizer):
    batches = _take(_loader(dataset, tokenizer, DataPosition(0), resampled=True, world_size=8,
                            rank=5), 3)
    assert all(b["images"].shape == (16, 3, 32, 32) for b in batches)


def test_corrupt_image_is_skipped_with_a_warning(tmp_path, tokenizer):
    write_shape_dataset(tmp_path / "ds", n_train=40, n_val=8, per_shard=40, corrupt=3)
    with pytest.warns(UserWarning, match="skipping sample synthetic_train_00000"):
        batches = _take(_loader(tmp_path / "ds", tokenizer, DataPosition(0), batch_size=37,
                                shuffle_buffer=0), 1)
    assert len(batches[0]["keys"]) == 37
    assert not {"synthetic_train_000000", "synthetic_train_000001"} & set(batches[0]["keys"])


def test_eval_stream_reads_val_once_in_order(dataset, tokenizer):
    shards = list_shards(str(dataset), "val")
    tf = eval_transform(32, MEAN, STD)
    batches = list(eval_loader(shards, tf, tokenizer, batch_size=16, workers=2))
    assert [b["images"].shape[0] for b in batches] == [16, 16, 8]
    assert batches[0]["images"].shape[1:] == (3, 32, 32)
    limited = list(eval_loader(shards, tf, tokenizer, batch_size=16, workers=0, max_samples=20))
    assert sum(b["images"].shape[0] for b in limited) == 20


def test_manifest_listing_a_missing_shard_is_refused(dataset, tmp_path):
    copy = tmp_path / "copy"
    for f in dataset.rglob("*"):  # the same files (split folders too), less one train shard
        if f.is_file() and f.name != "train-000002.tar":
            (copy / f.relative_to(dataset)).parent.mkdir(parents=True, exist_ok=True)
            (copy / f.relative_to(dataset)).symlink_to(f)
    with pytest.raises(FileNotFoundError, match=r"lists 1 shard\(s\) that are missing: .*train-000002.tar"):
        list_shards(str(copy), "train")
    assert len(list_shards(str(copy), "val")) == 1  # the other split is whole
