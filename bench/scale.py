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
- ``--resume`` / ``--resume-score``: stage 2 / stage 3 killed (SIGKILL to the process
  group) at about half-way, rerun, and their outputs compared with the uninterrupted run's.
- ``--resume-train N``: ``zhclip train`` (tiny towers, N steps per stage) on the final
  shards, once through and once killed after its first stage and resumed with
  ``--resume latest``; every step's loss is compared.
- ``--skip-download`` with ``--work`` of an earlier run: stages 3 and on over that run's
  downloads (stage 2 at 100k takes longer than the rest together).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
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
        **_fetch_extremes(stats),
    }


def _fetch_extremes(stats: list[dict]) -> dict:
    """zhclip's longest single fetch against its deadline, and the per-host limit's toll."""
    fetch = [
        s["zhclip"]["fetch"]
        for s in stats
        if "longest_fetch_s" in s.get("zhclip", {}).get("fetch", {})
    ]
    if not fetch:
        return {}
    return {
        "longest_fetch_s": max(f["longest_fetch_s"] for f in fetch),
        "deadline_s": max(f["deadline_s"] for f in fetch),
        "host_slot_waits": sum(f.get("host_slot_waits", 0) for f in fetch),
        "host_slot_timeouts": sum(f.get("host_slot_timeouts", 0) for f in fetch),
    }


def host_pressure(server: dict) -> dict:
    """How hard the client pressed the hosts: the busiest host relative to its connection
    limit, and how many of the slowest hosts' connections were open at once."""
    hosts = server.get("per_host", {}).values()
    if not hosts:
        return {}
    slowest = max(h["median_latency"] for h in hosts)
    slow = [h for h in hosts if h["median_latency"] == slowest]
    return {
        "hosts_at_limit": sum(h["max_active"] >= h["limit"] for h in hosts),
        "hosts_over_limit": sum(h["max_open"] > h["limit"] for h in hosts),
        "slow_hosts_max_open": max(h["max_open"] for h in slow),
        "slow_hosts_limit": max(h["limit"] for h in slow),
        "slow_hosts_url_share": round(
            sum(h["requests"] for h in slow) / max(1, server["requests"]), 4
        ),
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


def train_cmd(*args: str) -> list[str]:
    """``zhclip train`` has no --quiet / --no-progress of its own."""
    return [str(Path(sys.executable).parent / "zhclip"), "train", *args]


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
    ap.add_argument(
        "--resume-train",
        type=int,
        default=0,
        metavar="STEPS",
        help="train tiny towers STEPS steps per stage, kill -9 after stage 1, resume",
    )
    ap.add_argument("--skip-train", action="store_true", help="no training stream after stage 3")
    ap.add_argument(
        "--skip-download", action="store_true", help="reuse the stage 2 output already in --work"
    )
    ap.add_argument(
        "--max-per-host",
        type=int,
        default=0,
        help="stage 2 once more with download.max_per_host at this value (politeness cost)",
    )
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

    out = root / "zhclip"
    cfg = write_config(root, out, args.threads, models)
    if not args.skip_download:
        stage2(args, root, out, cfg, per_shard, result)
    elif not (out / "downloads").is_dir():
        ap.error(f"--skip-download: no stage 2 output in {out / 'downloads'}; run without it first")
    if not args.skip_score:
        stage3_and_training(args, root, out, cfg, mclip, result)
    result["figures_from"] = "bench/scale.py"
    print(json.dumps(result))
    return 0


def stage2(
    args: argparse.Namespace, root: Path, out: Path, cfg: Path, per_shard: int, result: dict
) -> None:
    """zhclip and plain img2dataset on the same URLs of a fresh simulated web (and the resume)."""
    with SimWeb(hosts=args.hosts) as web:
        urls = web.urls(args.urls)
        live = sum(plan(u.split("/", 3)[3]).outcome in LIVE for u in urls)
        result["planned_live"] = live
        write_inputs(urls, root, per_shard)
        sides = [("zhclip", None)] + ([] if args.skip_i2d else [("img2dataset", None)])
        if args.max_per_host:
            sides.append(("zhclip_polite", args.max_per_host))
        for name, limit in sides:
            web.reset()
            if name.startswith("zhclip"):
                side_cfg, side_out = cfg, out
                if limit:  # the same run with download.max_per_host, into its own folder
                    side_out = root / name
                    side_cfg = variant_config(
                        cfg, root / f"config-{name}.yaml", side_out, max_per_host=limit
                    )
                w = zhclip_download(side_cfg, side_out, root / "metadata")
                w.run()
                st = folder_stats(side_out / "downloads")
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
                **host_pressure(server),
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
        if args.max_per_host:
            polite = result["stage2_zhclip_polite"]
            result["stage2_polite_shard_ratio"] = round(polite["shard_per_s"] / z["shard_per_s"], 3)
        if not args.skip_i2d:
            i = result["stage2_img2dataset"]
            result["stage2_shard_ratio"] = round(z["shard_per_s"] / i["shard_per_s"], 3)
            result["stage2_e2e_ratio"] = round(z["e2e_per_s"] / i["e2e_per_s"], 3)
        if args.resume:
            result["stage2_resume"] = resume_stage2(root, web, cfg, out, args.urls)


def spilled_rows(out: Path) -> int:
    """Stage 3's scored-and-kept rows so far: its spill parts are named ``{uuid}-{rows}.arrow``."""
    total = 0
    for p in (out / "_tmp" / "score" / "images").glob("*.arrow"):
        count = p.stem.rpartition("-")[2]
        total += int(count) if count.isdigit() else 0
    return total


def stage3_and_training(
    args: argparse.Namespace, root: Path, out: Path, cfg: Path, mclip: Path, result: dict
) -> None:
    """Stage 3 over zhclip's downloads, its resume, a training stream and the training resume."""
    # A killed earlier run's spill files would count as progress until stage 3 removes them.
    shutil.rmtree(out / "_tmp" / "score", ignore_errors=True)
    w = Watched(zhclip_cmd("score", "--config", str(cfg)), progress=lambda: spilled_rows(out))
    w.run()
    rep = json.loads((out / "report" / "score.json").read_text())
    rows, kept = rep["total"]["rows_in"], rep["total"]["kept"]
    scored = max((r for _, r in w.events), default=0)
    scored_at = next((t for t, r in w.events if r >= scored), w.wall)
    result["stage3"] = {
        "rc": w.rc,
        "rows_in": rows,
        "kept": kept,
        "wall_s": round(w.wall, 1),
        "per_s": round(rows / w.wall, 1),
        **w.memory(),
        # Quarters of the scoring phase (rows kept by ScoreShard); then dedup, join and writing.
        **(w.quarters(scored) if scored else {}),
        "after_scoring_s": round(w.wall - scored_at, 1),
    }
    print("score", json.dumps(result["stage3"]), file=sys.stderr, flush=True)
    if args.resume_score:
        result["stage3_resume"] = resume_stage3(root, cfg, out)
    if args.skip_train:
        return
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
    print("train_stream", json.dumps(result["train_stream"]), file=sys.stderr, flush=True)
    if args.resume_train:
        result["train_resume"] = resume_training(root, out / "dataset", args.resume_train)


def _metrics(train_dir: Path) -> dict[int, float]:
    """Loss per step from metrics.csv; a step logged again after a resume counts as its last."""
    import csv

    with (train_dir / "metrics.csv").open(encoding="utf-8") as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f)}


def resume_training(root: Path, dataset: Path, steps: int) -> dict:
    """``zhclip train`` on the final shards (tiny towers, ``steps`` per stage), once through and
    once killed by SIGKILL after stage 1's last checkpoint, then ``--resume latest``."""
    import yaml
    from zhclip.training.checkpoint import list_checkpoints
    from zhclip.training.tiny import write_tiny_bert, write_tiny_image_tower

    models = root / "train-models"
    image = write_tiny_image_tower(models / "vit", name="Scale-Tiny-ViT", image_size=64)
    captions = pq.read_table(next(dataset.glob("train/*.parquet")), columns=[S.CAPTION])
    bert = write_tiny_bert(models / "bert", captions.column(0).to_pylist())

    def config(name: str) -> Path:
        section = {
            "image": image,
            "text": {"model": str(bert)},
            "context_length": 24,
            "data": {
                "path": str(dataset),
                "workers": 1,
                "shuffle_buffer": 500,
                "auto_augment": False,
            },
            "stage1": {"steps": steps, "batch_size": 64, "lr": 1e-3, "warmup": 5},
            "stage2": {"steps": steps, "batch_size": 64, "lr": 1e-4, "warmup": 5},
            "eval_every": 10 * steps,
            "save_every": max(1, steps // 5),
            "log_every": 1,
            "keep_checkpoints": 100,
            "device": "cpu",
        }
        path = root / f"train-{name}.yaml"
        path.write_text(
            yaml.safe_dump({"output": str(root / name), "train": section}, allow_unicode=True),
            encoding="utf-8",
        )
        return path

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("train-full", "train-killed"):  # an earlier run's, in the same --work
        shutil.rmtree(root / name, ignore_errors=True)
    full = Watched(train_cmd("--config", str(config("train-full"))), env=env)
    full.run()
    ckpts = root / "train-killed" / "train" / "checkpoints"
    killed = Watched(
        train_cmd("--config", str(config("train-killed"))),
        env=env,
        progress=lambda: (
            max((s for s, _ in list_checkpoints(ckpts)), default=0) if ckpts.exists() else 0
        ),
    )
    killed.run(kill_at_rows=steps)
    saved = max((s for s, _ in list_checkpoints(ckpts)), default=0) if ckpts.exists() else 0
    again = Watched(
        train_cmd("--config", str(config("train-killed")), "--resume", "latest"), env=env
    )
    again.run()
    a, b = _metrics(root / "train-full" / "train"), _metrics(root / "train-killed" / "train")
    common = sorted(set(a) & set(b))
    worst = max((abs(a[k] - b[k]) for k in common), default=float("nan"))
    return {
        "rc": [full.rc, again.rc],
        "steps": len(a),
        "killed_after_checkpoint": saved,
        "identical_steps": sorted(a) == sorted(b) == list(range(1, 2 * steps + 1)),
        "max_abs_loss_diff": worst,
        "full_wall_s": round(full.wall, 1),
        **{f"full_{k}": v for k, v in full.memory().items()},
    }


def variant_config(cfg: Path, path: Path, out: Path, **download) -> Path:
    """``cfg`` with another output folder and ``download`` keys changed, written to ``path``."""
    import yaml

    data = yaml.safe_load(cfg.read_text())
    data["output"] = str(out)
    data["download"].update(download)
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


def resume_stage2(root: Path, web: SimWeb, cfg: Path, out: Path, n: int) -> dict:
    """Kill stage 2 at half its rows, rerun it into the same folder, compare with ``out``."""
    import yaml

    again = root / "zhclip-resume"
    shutil.rmtree(again, ignore_errors=True)  # an earlier run's copy in the same --work
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
    """Kill stage 3 in a copy once half the rows it keeps are scored, rerun, compare final shards."""
    import yaml

    again = root / "score-resume"
    shutil.rmtree(again, ignore_errors=True)  # an earlier run's copy in the same --work
    (again / "downloads").mkdir(parents=True)
    for p in (out / "downloads").iterdir():
        if p.is_file():
            os.link(p, again / "downloads" / p.name)
    data = yaml.safe_load(cfg.read_text())
    data["output"] = str(again)
    cfg3 = root / "config-score-resume.yaml"
    cfg3.write_text(yaml.safe_dump(data, allow_unicode=True))
    half = json.loads((out / "report" / "score.json").read_text())["total"]["kept"] // 2
    w = Watched(zhclip_cmd("score", "--config", str(cfg3)), progress=lambda: spilled_rows(again))
    w.run(kill_at_rows=half)
    killed_at = max((r for _, r in w.events), default=0)
    Watched(zhclip_cmd("score", "--config", str(cfg3))).run()
    same = digest_dataset(again / "dataset") == digest_dataset(out / "dataset")
    return {"killed": w.rc == -9, "killed_at_scored_rows": killed_at, "identical": same}


if __name__ == "__main__":
    sys.exit(main())
