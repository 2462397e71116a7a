"""Stage 3 keeps its embeddings (score.save_embeddings): clip-retrieval's layout, read as-is by
autofaiss, answered from by `zhclip search`, on the real DirectRunner with a tiny M-CLIP."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from zhclip.pipeline.cli import main as cli_main
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.core.config import ConfigError, config_from_dict
from zhclip.pipeline.demo.synthetic import ZH_CAPTIONS, Row, write_download_shard
from zhclip.pipeline.inspect import search as SR
from zhclip.pipeline.score import embeddings as E
from zhclip.pipeline.score.final_shards import SPILL_PATH, load_spilled, spill_images
from zhclip.pipeline.score.job import run_score
from zhclip.pipeline.score.steps import IMAGE
from zhclip.pipeline.score.tiny_mclip import build_tiny_models
from zhclip.pipeline.shards import format as SH
from zhclip.pipeline.shards.verify import verify_dataset

SPS = 5


def _downloads(folder: Path) -> None:
    """Two download shards, every caption distinct (a text query then has one right answer)."""
    for s in range(2):
        rows = [
            Row(
                key=f"wukong_{s}{i:02d}", caption=f"{ZH_CAPTIONS[i % len(ZH_CAPTIONS)]}，第{s}{i}张"
            )
            for i in range(11)
        ]
        write_download_shard(folder, f"{s:05d}", rows, seed=s)


def _cfg(out: Path, models: dict[str, str], **score):
    return config_from_dict(
        {
            "output": str(out),
            "score": {
                **models,
                "batch_size": 4,
                "device": "cpu",
                "thresholds": {},
                "decode_workers": 0,
                "save_embeddings": True,
                **score,
            },
            "shards": {"samples_per_shard": SPS, "val_fraction": 0.3},
        }
    )


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    models = build_tiny_models(tmp_path_factory.mktemp("models"))
    out = tmp_path_factory.mktemp("emb")
    _downloads(out / SH.DOWNLOADS_DIR)
    report = run_score(_cfg(out, models), [])
    return out, models, report


def _stored(out: Path, kind: str) -> np.ndarray:
    return np.concatenate(
        [np.load(p) for p in sorted((out / E.EMBEDDINGS_DIR / kind).glob("*.npy"))]
    )


def _metadata(out: Path) -> list[dict]:
    return [
        row
        for p in sorted((out / E.EMBEDDINGS_DIR / E.METADATA).glob("*.parquet"))
        for row in pq.read_table(p).to_pylist()
    ]


def test_one_file_triple_per_final_shard_row_aligned_with_its_tar(run):
    out, _, report = run
    assert report["total"]["kept"] == 22
    manifest = SH.read_manifest(str(out / SH.DATASET_DIR))
    shards = sorted(manifest["shards"], key=lambda s: (SH.SPLITS.index(s["split"]), s["index"]))
    entries = manifest["embeddings"]["shards"]
    # N runs over train shards then val shards; each entry is one final shard.
    assert [e["shard"] for e in entries] == [f"{s['split']}/{s['name']}" for s in shards]
    assert [e["number"] for e in entries] == list(range(len(shards)))
    assert {s["split"] for s in shards} == {"train", "val"}
    assert verify_dataset(str(out / SH.DATASET_DIR)) == []
    for entry, shard in zip(entries, shards, strict=True):
        tar = out / SH.DATASET_DIR / f"{entry['shard']}.tar"
        with tarfile.open(tar) as t:
            tar_keys = [m.name.rsplit(".", 1)[0] for m in t.getmembers() if m.name.endswith(".txt")]
        meta = pq.read_table(out / E.EMBEDDINGS_DIR / E.file_name(E.METADATA, entry["number"]))
        assert [SH.member_stem(k) for k in meta.column(S.KEY).to_pylist()] == tar_keys
        assert entry["samples"] == shard["samples"] == len(tar_keys)
        for f in entry["files"]:  # the manifest's checksums are the files' own
            data = (out / E.EMBEDDINGS_DIR / f["name"]).read_bytes()
            assert (len(data), hashlib.sha256(data).hexdigest()) == (f["bytes"], f["sha256"])
        img = np.load(out / E.EMBEDDINGS_DIR / E.file_name(E.IMG_EMB, entry["number"]))
        txt = np.load(out / E.EMBEDDINGS_DIR / E.file_name(E.TEXT_EMB, entry["number"]))
        assert img.dtype == txt.dtype == np.float16 and img.shape == txt.shape
        assert img.shape[0] == len(tar_keys)
        np.testing.assert_allclose(np.linalg.norm(img.astype(np.float32), axis=1), 1, atol=2e-3)
        # Row-aligned: each row's image . text is that sample's own stored score.
        cosine = (img.astype(np.float32) * txt.astype(np.float32)).sum(axis=1)
        np.testing.assert_allclose(cosine, meta.column(S.SCORE).to_pylist(), atol=3e-3)


def test_rerun_writes_the_same_bytes_and_drops_stale_files(run, tmp_path):
    out, models, _ = run
    folder = out / E.EMBEDDINGS_DIR
    before = _files(folder)
    (folder / E.file_name(E.IMG_EMB, 99)).write_bytes(b"stale")
    (folder / E.INDEX_DIR).mkdir(exist_ok=True)
    (folder / E.INDEX_DIR / "image.index").write_bytes(b"old index")
    # Another runner mode (two worker threads, other bundles): the same bytes.
    run_score(
        _cfg(out, models), ["--direct_num_workers=2", "--direct_running_mode=multi_threading"]
    )
    assert _files(folder) == before
    # Off again: a later run without embeddings leaves none that would describe old shards.
    other = tmp_path / "off"
    _downloads(other / SH.DOWNLOADS_DIR)
    (other / E.EMBEDDINGS_DIR / E.IMG_EMB).mkdir(parents=True)
    (other / E.EMBEDDINGS_DIR / E.file_name(E.IMG_EMB, 0)).write_bytes(b"old")
    run_score(_cfg(other, models, save_embeddings=False), [])
    assert _files(other / E.EMBEDDINGS_DIR) == {}
    assert "embeddings" not in SH.read_manifest(str(other / SH.DATASET_DIR))


def test_autofaiss_index_and_zhclip_search_find_a_pair_by_its_image_and_caption(run, capsys):
    # autofaiss's own entry point (`autofaiss quantize`, the pinned 1.x name of build_index),
    # pointed at the folders as they are.
    from autofaiss.external.quantize import Quantizer

    out, _, _ = run
    folder = out / E.EMBEDDINGS_DIR
    index_dir = folder / E.INDEX_DIR
    built = {
        kind: Quantizer().quantize(
            embeddings_path=str(folder / kind),
            output_path=str(index_dir / kind),
            metric_type="ip",
            nb_cores=1,
        )
        for kind in (E.IMG_EMB, E.TEXT_EMB)
    }
    assert all(Path(p).is_file() for p in built.values()), built
    capsys.readouterr()  # autofaiss's own progress lines
    meta = _metadata(out)
    images, texts = _stored(out, E.IMG_EMB), _stored(out, E.TEXT_EMB)
    assert len(meta) == len(images) == 22
    target = 13
    key, caption, shard = meta[target][S.KEY], meta[target][S.CAPTION], meta[target]["shard"]

    # --image: a stored image (bytes out of its final tar) comes back first, as itself.
    with tarfile.open(out / SH.DATASET_DIR / f"{shard}.tar") as t:
        jpg = t.extractfile(f"{SH.member_stem(key)}.jpg").read()
    query = out / "query.jpg"
    query.write_bytes(jpg)
    assert cli_main(["search", str(out), "--image", str(query), "-k", "5"]) == 0
    captured = capsys.readouterr()
    lines = [line.split("\t") for line in captured.out.splitlines()]
    assert "autofaiss index" in captured.err
    assert len(lines) == 5 and lines[0][2] == key and lines[0][3] == caption
    assert float(lines[0][1]) > float(lines[1][1]) and float(lines[0][1]) > 0.99

    # --text: the caption's embedding is the one stage 3 stored for that key (same model,
    # same weights), and the caption index gives that key first.
    scorer = SR.build_query_scorer(str(out))
    np.testing.assert_allclose(
        scorer.embed_texts([caption])[0], texts[target].astype(np.float32), atol=2e-3
    )
    results, where = SR.search(str(out), text=caption, k=5, space="text")
    assert "autofaiss" in where and results[0]["key"] == key and results[0]["caption"] == caption
    # Across modalities the random tiny towers promise nothing; the image space must still
    # rank by the stored embeddings: its top hit is the argmax of image . caption.
    results, _ = SR.search(str(out), text=caption, k=5)
    best = int(np.argmax(images.astype(np.float32) @ texts[target].astype(np.float32)))
    assert results[0]["key"] == meta[best][S.KEY]

    # Without autofaiss's file: the same answer from an exact index built here.
    Path(built[E.TEXT_EMB]).unlink()
    exact, where = SR.search(str(out), text=caption, k=5, space="text")
    assert where.startswith("exact") and exact[0]["key"] == key


def test_bad_input_is_one_line(run, tmp_path, capsys):
    out, models, _ = run
    assert cli_main(["search", str(tmp_path), "--text", "猫"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "save_embeddings" in err
    assert cli_main(["search", str(out), "--image", str(tmp_path / "none.jpg")]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="precomputed"):
        run_score(_cfg(tmp_path, models, backend="precomputed"), [])


def test_embeddings_leave_the_records_before_any_shuffle(tmp_path):
    """What crosses the key join and the shard grouping is metadata only; the float16
    vectors wait in the spill file with the image bytes until their shard is written."""
    vectors = np.random.default_rng(0).normal(size=(3, 2, 8)).astype(np.float32)
    records = [
        {S.KEY: f"k{i}", IMAGE: bytes([i]) * 10, **E.record_fields(v[0], v[1])}
        for i, v in enumerate(vectors)
    ]
    moved = list(spill_images(records, str(tmp_path)))
    assert all(set(r) == {S.KEY, SPILL_PATH, "spill_row"} for r in moved)
    back = np.stack([np.frombuffer(b, np.float16) for b in load_spilled(moved[::-1], E.TEXT_EMB)])
    np.testing.assert_array_equal(back, vectors[::-1, 1].astype(np.float16))
    assert load_spilled(moved, IMAGE)[2] == bytes([2]) * 10
