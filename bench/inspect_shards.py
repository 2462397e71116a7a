"""`zhclip shards verify` throughput and peak memory, against reading the tars alone.

    python bench/inspect_shards.py                        # 100 shards x 1000 samples (the issue's size)
    python bench/inspect_shards.py --shards 10 --per-shard 200

Writes a dataset folder with pipeline.shards (small JPEGs, unique keys, a
manifest), then runs each reader in its own child process, so each peak RSS is
that reader's alone:

- raw read (baseline): stream every tar member's bytes with tarfile, no checks.
- zhclip verify --no-decode: every check except decoding the images.
- zhclip verify: everything (the command's default).
- zhclip verify on the first 10% of the shards: its RSS next to the full run's
  shows memory is flat in the number of shards.

Prints samples/s, peak RSS and the ratio to the raw read. Target: RSS < 300 MB.

(Named inspect_shards.py, not inspect.py: a bench/inspect.py would shadow the
standard library's ``inspect`` for every ``python bench/*.py``.)
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from PIL import Image  # noqa: E402
from zhclip.pipeline.core import paths  # noqa: E402
from zhclip.pipeline.core import schema as S  # noqa: E402
from zhclip.pipeline.core.memory import peak_rss_mb  # noqa: E402
from zhclip.pipeline.shards import format as SH  # noqa: E402
from zhclip.pipeline.shards import manifest as MF  # noqa: E402
from zhclip.pipeline.shards import writer as SW  # noqa: E402

RSS_TARGET_MB = 300
CAPTIONS = ["一只猫坐在窗台上晒太阳", "两个孩子在公园里踢足球", "红色的汽车停在路边", "海边的日落非常美丽"]


def small_jpegs(n: int, size: int) -> list[bytes]:
    out = []
    for i in range(n):
        img = Image.new("RGB", (size, size), ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256))
        img.paste(((i * 13) % 256, 255 - i % 256, 128), (0, 0, size // 2, size // 2))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def write_folder(folder: Path, shards: int, per_shard: int, image_size: int) -> int:
    images = small_jpegs(64, image_size)
    digests = [hashlib.sha256(b).hexdigest() for b in images]
    infos = []
    for s in range(shards):
        samples = []
        for i in range(per_shard):
            n = s * per_shard + i
            key = f"wukong_{n:08d}"
            meta = {S.SOURCE: "wukong", S.URL: f"http://127.0.0.1/{n}.jpg", S.CAPTION_ORIG: None,
                    S.SCORE: 0.3, S.WIDTH: image_size, S.HEIGHT: image_size, S.SHA256: digests[n % 64]}
            samples.append(SH.ShardSample(key, images[n % 64], CAPTIONS[n % 4], meta))
        infos.append(SW.write_shard(str(folder), SH.SPLIT_TRAIN, s, samples))
    MF.write_manifest(str(folder), MF.build_manifest(infos, None))
    return shards * per_shard


def subset_folder(full: Path, sub: Path, fraction: float) -> int:
    """A folder of links to the first shards of ``full``, with its own manifest."""
    manifest = SH.read_manifest(str(full))
    keep = manifest["shards"][: max(1, int(len(manifest["shards"]) * fraction))]
    sub.mkdir()
    for shard in keep:
        for name in shard["files"]:  # "train/train-000000.tar": keep the split folder
            (sub / name).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(full / name, sub / name)
    MF.write_manifest(str(sub), MF.build_manifest(keep, None))
    return sum(s["samples"] for s in keep)


# --- what each child process runs -------------------------------------------------------------


def child(mode: str, folder: str) -> dict:
    started = time.perf_counter()
    if mode == "raw_read":
        samples = 0
        for uri in SH.list_dataset_shards(folder):
            with paths.open_input(uri) as f, tarfile.open(fileobj=f, mode="r|") as tar:
                for info in tar:
                    tar.extractfile(info).read()
                    samples += info.name.endswith(".json")
        ok = True
    else:
        from zhclip.pipeline.shards import reader as src
        from zhclip.pipeline.shards.verify import verify_folder

        result = verify_folder(src.open_folder(folder), decode=mode == "verify")
        ok, samples = result.ok, result.samples
    seconds = time.perf_counter() - started
    rss_mb = peak_rss_mb()  # VmHWM: a child's ru_maxrss starts at its parent's peak
    return {"mode": mode, "ok": ok, "samples": samples, "seconds": seconds, "rss_mb": rss_mb}


def run_child(mode: str, folder: Path) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", mode, str(folder)],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", type=int, default=100)
    parser.add_argument("--per-shard", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0

    with tempfile.TemporaryDirectory(prefix="zhclip-bench-inspect-") as tmp:
        full = Path(tmp) / "dataset"
        t0 = time.perf_counter()
        total = write_folder(full, args.shards, args.per_shard, args.image_size)
        size_mb = sum(p.stat().st_size for p in full.rglob("*") if p.is_file()) / 2**20
        print(f"wrote {args.shards} shards x {args.per_shard} samples ({total} samples, {size_mb:.0f} MiB) "
              f"in {time.perf_counter() - t0:.1f}s", flush=True)
        sub = Path(tmp) / "subset"
        subset_folder(full, sub, 0.1)

        for p in (p for p in full.rglob("*") if p.is_file()):  # page cache warm for every reader alike, not only the later ones
            p.read_bytes()
        runs = [run_child(m, full) for m in ("raw_read", "verify_no_decode", "verify")]
        small = run_child("verify", sub)
        small["mode"] = f"verify ({small['samples']} samples)"
        base = runs[0]["samples"] / runs[0]["seconds"]
        print(f"\n{'reader':<28} {'samples':>8} {'seconds':>8} {'samples/s':>10} {'vs raw':>7} {'peak RSS':>9}  ok")
        for r in [*runs, small]:
            rate = r["samples"] / r["seconds"]
            print(f"{r['mode']:<28} {r['samples']:>8} {r['seconds']:>8.2f} {rate:>10.0f} {rate / base:>7.2f} "
                  f"{r['rss_mb']:>7.0f}MB  {r['ok']}")
        full_rss = runs[-1]["rss_mb"]
        print(f"\nzhclip shards verify: {runs[-1]['samples'] / runs[-1]['seconds']:.0f} samples/s, peak RSS "
              f"{full_rss:.0f} MB (target < {RSS_TARGET_MB} MB: {'met' if full_rss < RSS_TARGET_MB else 'MISSED'}); "
              f"RSS at 10x the shards: {full_rss / small['rss_mb']:.2f}x")
        if not all(r["ok"] for r in [*runs, small]):
            print("a reader found problems in a clean folder", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
