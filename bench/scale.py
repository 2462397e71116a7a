"""Scale rehearsal: N URLs of the simulated web through stage 2, stage 3 and a training stream.

    python bench/scale.py --urls 10000 --resume        # ~30 min on 2 busy cores
    python bench/scale.py --urls 100000 --skip-i2d     # zhclip only

One run, one JSON line at the end with every figure:

- stage 2: zhclip (``zhclip download``) and plain img2dataset (``img2dataset.download``)
  on the same URL list with the same settings (224px center_crop, JPEG q95,
  sha256, timeout 10 s, no retries, the same threads and rows per shard, one
  process). ``shard_ratio``: rows / summed shard durations of each (the download
  work); ``e2e_ratio``: rows / wall time of each. Every URL accounted for
  (kept + rejected == rows) and the longest single shard are reported.
- stage 3 (``zhclip score``, tiny M-CLIP scorer) over zhclip's downloads.
- a training stream (``training.data.train_loader``) over the final shards: one
  pass of batches, no model.
- each stage runs in its own process; peak RSS is the largest summed RSS of its
  process tree (sampled every 0.25 s) and the largest VmHWM of any process in it.
- throughput of the first and the last quarter of each stage's rows, from the
  times its shards (or batches) completed.
- connections and requests per URL, counted by the web.
- ``--resume``: stage 2 and stage 3 killed (SIGKILL to the process group) at
  about half-way, rerun, and their outputs compared with the uninterrupted run's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proctree import Watched  # noqa: E402  (bench/proctree.py)
from zhclip.pipeline.core import schema as S  # noqa: E402
from zhclip.pipeline.demo.simweb import SimWeb  # noqa: E402
from zhclip.pipeline.demo.simweb_spec import LIVE, plan  # noqa: E402

SAMPLE_COLUMNS = ("key", "status", "error_class", "sha256", "width", "height")
DOWNLOAD = {
    "image_size": 224,
    "resize_mode": "center_crop",
    "encode_format": "jpg",
    "encode_quality": 95,
    "timeout": 10,
    "retries": 0,
    "compute_hash": "sha256",
}


def stats_rows(folder: Path) -> int:
    total = 0
    for p in folder.glob("*_stats.json"):
        try:
            total += json.loads(p.read_text())["count"]
        except (OSError, ValueError, KeyError):
            continue
    return total


def _per_row(stats: list[dict], field: str) -> float | None:
    """``zhclip.fetch[field]`` per row, over the shards that record it."""
    counted = [s for s in stats if field in s.get("zhclip", {}).get("fetch", {})]
    rows = sum(s["count"] for s in counted)
    return round(sum(s["zhclip"]["fetch"][field] for s in counted) / rows, 4) if rows else None


def folder_stats(folder: Path) -> dict:
    stats = [json.loads(p.read_text()) for p in folder.glob("*_stats.json")]
    return {
        "rows": sum(s["count"] for s in stats),
        "successes": sum(s["successes"] for s in stats),
        "shard_seconds": sum(s["duration"] for s in stats),
        "longest_shard_s": max((s["duration"] for s in stats), default=0.0),
        # zhclip counts its name lookups; urllib (plain img2dataset) resolves per connection.
        "dns_lookups_per_row": _per_row(stats, "dns_lookups"),
        "shards": len(stats),
    }


# --- the stages ------------------------------------------------------------------------------


def write_inputs(urls: list[str], root: Path, per_shard: int) -> None:
    n = len(urls)
    table = pa.table(
        {
            S.KEY: [f"sim:{i:09d}" for i in range(n)],
            S.URL: urls,
            S.CAPTION: [f"模拟网页上的第{i}张图片" for i in range(n)],
            S.SOURCE: ["simweb"] * n,
        }
    )
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    for i in range(0, n, per_shard):
        part = S.conform(table.slice(i, per_shard), S.METADATA_SCHEMA)
        pq.write_table(part, root / "metadata" / f"{i // per_shard:05d}.parquet")
    pq.write_table(table.select([S.URL, S.CAPTION]), root / "urls.parquet")


def write_config(root: Path, out: Path, threads: int, models: dict) -> Path:
    import yaml

    cfg = {
        "output": str(out),
        "filters": {"urls": {"allow_networks": ["127.0.0.0/8"]}},
        "download": {**DOWNLOAD, "thread_count": threads},
        "score": {
            "backend": "mclip",
            **models,
            "batch_size": 32,
            "device": "cpu",
            "thresholds": {},
            "dedup_images": True,
        },
        "shards": {"samples_per_shard": 5000, "val_fraction": 0.001},
    }
    path = root / f"config-{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return path


def zhclip_cmd(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "zhclip"), *args, "--no-progress", "--quiet"]


def zhclip_download(cfg: Path, out: Path, metadata: Path) -> Watched:
    """``zhclip download`` into ``out`` (its URL shards linked from ``metadata``), watched."""
    (out / "metadata").mkdir(parents=True, exist_ok=True)
    for p in metadata.glob("*.parquet"):
        os.link(p, out / "metadata" / p.name)
    return Watched(
        zhclip_cmd("download", "--config", str(cfg)),
        progress=lambda: stats_rows(out / "downloads"),
    )


def i2d_cmd(root: Path, dest: Path, threads: int, per_shard: int) -> list[str]:
    code = (
        "from img2dataset import download\n"
        f"download(url_list={str(root / 'urls.parquet')!r}, input_format='parquet', "
        f"url_col={S.URL!r}, caption_col={S.CAPTION!r}, output_format='webdataset', "
        f"output_folder={str(dest)!r}, processes_count=1, thread_count={threads}, "
        "image_size=224, resize_mode='center_crop', encode_format='jpg', encode_quality=95, "
        f"number_sample_per_shard={per_shard}, extract_exif=False, compute_hash='sha256', "
        "timeout=10, retries=0, user_agent_token='zhclip', disallowed_header_directives=None, "
        "enable_wandb=False)\n"
    )
    return [sys.executable, "-c", code]


TRAIN_STREAM = """
import json, sys, time
from transformers import AutoTokenizer
from zhclip.training import data as D
from zhclip.training.tokenizer import CaptionTokenizer
dataset, tok, batch, limit = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
shards = D.list_shards(dataset, "train")
spec = D.StreamSpec(shards=shards, batch_size=batch, workers=1, shuffle_buffer=1000)
tf = D.train_transform(224, [0.48, 0.46, 0.41], [0.27, 0.26, 0.28], auto_augment=False)
loader = D.train_loader(spec, tf, CaptionTokenizer(AutoTokenizer.from_pretrained(tok)),
                        D.DataPosition(1), prefetch=2)
start, seen, times = time.monotonic(), 0, []
for b in loader:
    seen += len(b["keys"]); times.append((time.monotonic() - start, seen))
    if seen >= limit: break
print(json.dumps(times))
"""


def digest_downloads(folder: Path) -> str:
    """Order-free digest of a downloads folder: every row (minus timings) and tar member."""
    import tarfile

    h = hashlib.sha256()
    for p in sorted(folder.glob("*.parquet")):
        # What a sample is, not how long it took: error messages carry byte counts and timings.
        rows = sorted(
            pq.read_table(p, columns=list(SAMPLE_COLUMNS)).to_pylist(), key=lambda r: r["key"]
        )
        h.update(json.dumps(rows, sort_keys=True, default=str).encode())
    for p in sorted(folder.glob("*.tar")):
        with tarfile.open(p) as tf:
            members = sorted(
                (m.name, hashlib.sha256(tf.extractfile(m).read()).hexdigest()) for m in tf
            )
        h.update(json.dumps(members).encode())
    return h.hexdigest()


def digest_dataset(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix in (".tar", ".parquet"):
            h.update(p.relative_to(folder).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--urls", type=int, default=10_000)
    ap.add_argument("--hosts", type=int, default=64)
    ap.add_argument("--threads", type=int, default=64)
    ap.add_argument("--per-shard", type=int, default=None, help="default urls/40, at least 250")
    ap.add_argument("--skip-i2d", action="store_true")
    ap.add_argument("--skip-score", action="store_true")
    ap.add_argument("--resume", action="store_true", help="stage 2: kill -9 half-way, rerun")
    ap.add_argument("--resume-score", action="store_true", help="the same for stage 3")
    ap.add_argument("--work", default=None, help="folder to keep (default: a temporary one)")
    args = ap.parse_args()
    per_shard = args.per_shard or max(250, args.urls // 40)
    result: dict = {
        "urls": args.urls,
        "hosts": args.hosts,
        "threads": args.threads,
        "per_shard": per_shard,
        "cores": os.cpu_count(),
    }
    tmp = tempfile.mkdtemp(prefix="zhclip-scale-") if args.work is None else args.work
    root = Path(tmp)
    root.mkdir(parents=True, exist_ok=True)
    os.environ["SCALE_LOG"] = str(root / "stderr.log")
    from zhclip.pipeline.score.tiny_mclip import build_tiny_mclip, build_tiny_open_clip

    # A small scorer: stage 3's own work (decode, dedup, ranking, writing) is what scales.
    mclip = build_tiny_mclip(root / "models" / "mclip", hidden=64, layers=2, out_dim=64)
    image = build_tiny_open_clip(
        root / "models" / "open_clip",
        embed_dim=64,
        image_size=224,
        width=64,
        layers=2,
        patch_size=32,
    )
    models = {"model": str(mclip), "image_model": f"local-dir:{image}", "image_pretrained": ""}

    with SimWeb(hosts=args.hosts) as web:
        urls = web.urls(args.urls)
        live = sum(plan(u.split("/", 3)[3]).outcome in LIVE for u in urls)
        result["planned_live"] = live
        write_inputs(urls, root, per_shard)
        out = root / "zhclip"
        cfg = write_config(root, out, args.threads, models)
        sides = [("zhclip", None)] + ([] if args.skip_i2d else [("img2dataset", None)])
        for name, _ in sides:
            web.reset()
            if name == "zhclip":
                w = zhclip_download(cfg, out, root / "metadata")
                w.run()
                st = folder_stats(out / "downloads")
            else:
                dest = root / "i2d"
                w = Watched(
                    i2d_cmd(root, dest, args.threads, per_shard),
                    progress=lambda: stats_rows(root / "i2d"),
                )
                w.run()
                st = folder_stats(dest)
            server = web.stats()
            result[f"stage2_{name}"] = {
                "rc": w.rc,
                **st,
                "shard_per_s": round(st["rows"] / max(1e-9, st["shard_seconds"]), 1),
                "e2e_per_s": round(args.urls / w.wall, 1),
                "wall_s": round(w.wall, 1),
                **w.memory(),
                **w.quarters(args.urls),
                "connections_per_url": round(server["connections"] / args.urls, 3),
                "dns_lookups_per_url": st.pop("dns_lookups_per_row")
                or round(server["connections"] / args.urls, 4),
                "requests_per_url": round(server["requests"] / args.urls, 3),
                "server_cpu_s": round(server["server_cpu_s"], 1),
            }
            print(name, json.dumps(result[f"stage2_{name}"]), file=sys.stderr, flush=True)
        z = result["stage2_zhclip"]
        report = json.loads((out / "report" / "download.json").read_text())
        total = report["total"]
        z["kept"], z["rejected"] = total["kept"], total["rows_in"] - total["kept"]
        z["accounted"] = total["rows_in"] == args.urls and total.get("balanced", False)
        z["server_us_per_request"] = round(
            1e6 * z["server_cpu_s"] / max(1, z["requests_per_url"] * args.urls)
        )
        if not args.skip_i2d:
            i = result["stage2_img2dataset"]
            result["stage2_shard_ratio"] = round(z["shard_per_s"] / i["shard_per_s"], 3)
            result["stage2_e2e_ratio"] = round(z["e2e_per_s"] / i["e2e_per_s"], 3)
        if args.resume:
            result["stage2_resume"] = resume_stage2(root, web, cfg, out, args.urls)

    if not args.skip_score:
        w = Watched(zhclip_cmd("score", "--config", str(cfg)))
        w.run()
        rep = json.loads((out / "report" / "score.json").read_text())
        rows = rep["total"]["rows_in"]
        result["stage3"] = {
            "rc": w.rc,
            "rows_in": rows,
            "kept": rep["total"]["kept"],
            "wall_s": round(w.wall, 1),
            "per_s": round(rows / w.wall, 1),
            **w.memory(),
        }
        print("score", json.dumps(result["stage3"]), file=sys.stderr, flush=True)
        if args.resume_score:
            result["stage3_resume"] = resume_stage3(root, cfg, out)
        kept = rep["total"]["kept"]
        times_file = root / "train_stream.json"
        w = Watched(
            [sys.executable, "-c", TRAIN_STREAM, str(out / "dataset"), str(mclip), "64", str(kept)],
            stdout=times_file,
        )
        w.run()
        try:
            w.events = [tuple(x) for x in json.loads(times_file.read_text().splitlines()[-1])]
        except (ValueError, IndexError):
            w.events = []
        done = w.events[-1][1] if w.events else 0
        result["train_stream"] = {
            "rc": w.rc,
            "samples": done,
            "wall_s": round(w.wall, 1),
            **w.memory(),
            **(w.quarters(done) if done else {}),
        }
    result["figures_from"] = "bench/scale.py"
    print(json.dumps(result))
    return 0


def resume_stage2(root: Path, web: SimWeb, cfg: Path, out: Path, n: int) -> dict:
    """Kill stage 2 at half its rows, rerun it into the same folder, compare with ``out``."""
    import yaml

    again = root / "zhclip-resume"
    data = yaml.safe_load(cfg.read_text())
    data["output"] = str(again)
    cfg2 = root / "config-resume.yaml"
    cfg2.write_text(yaml.safe_dump(data, allow_unicode=True))
    w = zhclip_download(cfg2, again, out / "metadata")
    w.run(kill_at_rows=n // 2)
    killed_at = stats_rows(again / "downloads")
    Watched(zhclip_cmd("download", "--config", str(cfg2))).run()
    same = digest_downloads(again / "downloads") == digest_downloads(out / "downloads")
    return {"killed_at_rows": killed_at, "identical": same}


def resume_stage3(root: Path, cfg: Path, out: Path) -> dict:
    """Kill stage 3 at half the uninterrupted run's time in a copy, rerun, compare final shards."""
    import yaml

    again = root / "score-resume"
    (again / "downloads").mkdir(parents=True, exist_ok=True)
    for p in (out / "downloads").iterdir():
        if p.is_file():
            os.link(p, again / "downloads" / p.name)
    data = yaml.safe_load(cfg.read_text())
    data["output"] = str(again)
    cfg3 = root / "config-score-resume.yaml"
    cfg3.write_text(yaml.safe_dump(data, allow_unicode=True))
    first = json.loads((out / "report" / "score.json").read_text())
    half = max(5.0, float(first.get("seconds", 60)) / 2)
    w = Watched(zhclip_cmd("score", "--config", str(cfg3)))
    w.progress = lambda: int(time.monotonic() - w.start >= half)
    w.run(kill_at_rows=1)
    Watched(zhclip_cmd("score", "--config", str(cfg3))).run()
    same = digest_dataset(again / "dataset") == digest_dataset(out / "dataset")
    return {"killed_after_s": round(half, 1), "identical": same}


if __name__ == "__main__":
    sys.exit(main())
