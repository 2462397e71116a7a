"""Stage 1 throughput against a bare pyarrow run of the same work, side by side.

    python bench/metadata.py                 # 1M rows: rows/s of both and the ratio
    python bench/metadata.py --rows 200000   # quicker
    python bench/metadata.py --rss           # peak RSS of stage 1 at 100k vs 1M rows
    python bench/metadata.py --rss --rss-sizes 1000000 10000000   # issue 15's 1M vs 10M

The input is one LAION-format parquet file of synthetic rows: realistic
Chinese captions, ~12% carrying a blacklist term, ~5% repeating a URL. The
baseline reads it with pyarrow, applies the length rule, the same blacklist
matcher and a URL dedup, and writes parquet: the floor for this work in
Python. zhclip's stage 1 adds normalisation, URL checks, keys, rejects, a
report and Beam (DirectRunner, one worker).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from zhclip.pipeline.core.memory import peak_rss_mb

SUBJECTS = ["一只橘猫", "两只小狗", "一位老人", "一群孩子", "一辆红色汽车", "一座古老的寺庙", "一碗牛肉面",
            "一束鲜花", "一片稻田", "一只白鹭", "一架飞机", "几只鸽子", "一位年轻女孩", "一座高楼", "一艘帆船"]
ACTIONS = ["趴在", "站在", "走在", "停在", "摆在", "飞过", "坐在", "躺在", "出现在", "位于"]
PLACES = ["窗台上", "草地上", "老街的石板路上", "湖边", "雪山脚下", "夜晚的城市街头", "木质餐桌上",
          "金色的沙滩上", "秋天的公园里", "海边的礁石上", "繁忙的十字路口", "安静的书房里"]
TAILS = ["", "，阳光明媚", "，画面温馨", "，远处是蓝天白云", "，色彩鲜艳", "，高清摄影", "，黑白照片"]
BLACKLIST_BITS = ["全场包邮", "厂家直销", "扫码关注", "图片来源：视觉中国", "版权所有", "加微信咨询",
                  "IMG_20200101_1200.jpg", "DSC01234", "淘宝爆款", "限时秒杀", "咨询电话13812345678"]


def make_input(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    n_unique = int(rows * 0.95)
    captions, urls = [], []
    for i in range(rows):
        cap = rng.choice(SUBJECTS) + rng.choice(ACTIONS) + rng.choice(PLACES) + rng.choice(TAILS)
        if rng.random() < 0.12:
            cap = cap + rng.choice(BLACKLIST_BITS) if rng.random() < 0.5 else rng.choice(BLACKLIST_BITS) + cap
        captions.append(cap)
        j = i if i < n_unique else rng.randrange(n_unique)
        urls.append(f"https://img{j % 97}.example.com/photos/{j:09d}.jpg")
    order = np.random.default_rng(seed).permutation(rows)
    table = pa.table({
        "SAMPLE_ID": pa.array(np.arange(rows, dtype=np.int64)[order]),
        "URL": pa.array(urls).take(pa.array(order)),
        "TEXT": pa.array(captions).take(pa.array(order)),
        "HEIGHT": pa.array(np.full(rows, 512, dtype=np.int32)),
        "WIDTH": pa.array(np.full(rows, 512, dtype=np.int32)),
        "LICENSE": pa.array(["?"] * rows),
        "LANGUAGE": pa.array(["zh"] * rows),
        "NSFW": pa.array(["UNLIKELY"] * rows),
        "similarity": pa.array(np.full(rows, 0.3)),
    })
    pq.write_table(table, path, row_group_size=100_000)


def baseline(path: Path, out: Path, matcher) -> int:
    """Bare pyarrow: read -> length -> blacklist -> URL dedup -> write."""
    t = pq.read_table(path, columns=["SAMPLE_ID", "URL", "TEXT", "LANGUAGE"],
                      filters=[("LANGUAGE", "in", ["zh"])])
    length = pc.utf8_length(t.column("TEXT"))
    t = t.filter(pc.and_(pc.greater_equal(length, 5), pc.less_equal(length, 50)))
    t = t.filter(pc.is_null(matcher.match_array(t.column("TEXT"))))
    t = t.sort_by([("URL", "ascending"), ("SAMPLE_ID", "ascending")])
    u = t.column("URL").combine_chunks()
    first = np.ones(t.num_rows, dtype=bool)
    first[1:] = ~pc.equal(u.slice(1), u.slice(0, t.num_rows - 1)).to_numpy(zero_copy_only=False)
    t = t.filter(pa.array(first))
    pq.write_table(t, out / "baseline.parquet", compression="zstd")
    return t.num_rows


def run_zhclip(path: Path, out: Path) -> dict:
    from zhclip.pipeline.core.config import config_from_dict
    from zhclip.pipeline.metadata.job import run_metadata

    cfg = config_from_dict({
        "output": str(out),
        "sources": [{"name": "laion_zh", "kind": "laion", "paths": [str(path)], "batch_rows": 100_000}],
        "metadata": {"rows_per_shard": 100_000, "dedup_buckets": 8},
    })
    return run_metadata(cfg, ["--direct_num_workers=1", "--direct_running_mode=in_memory"])


def compare(rows: int, rounds: int) -> None:
    from zhclip.filters.rules import RuleSet
    from zhclip.pipeline.metadata import job as metadata  # noqa: F401  (import Beam outside the timing, like the matcher)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = tmp / "laion.parquet"
        t0 = time.perf_counter()
        make_input(path, rows)
        print(f"input: {rows:,} rows written in {time.perf_counter() - t0:.1f}s")
        matcher = RuleSet().matcher
        matcher.match_array(pa.array(["预热一下匹配器"]))  # build the automaton outside the timing
        tb_all, tz_all = [], []
        for r in range(rounds):  # alternate, so load from elsewhere hits both alike
            (tmp / f"b{r}").mkdir()
            t0 = time.perf_counter()
            kept_b = baseline(path, tmp / f"b{r}", matcher)
            tb_all.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            report = run_zhclip(path, tmp / f"z{r}")
            tz_all.append(time.perf_counter() - t0)
        tb, tz = min(tb_all), min(tz_all)
        kept_z = report["total"]["kept"]
        print(f"bare pyarrow : {rows / tb:>12,.0f} rows/s  (best of {rounds}: {tb:.2f}s, kept {kept_b:,})")
        print(f"zhclip stage1: {rows / tz:>12,.0f} rows/s  (best of {rounds}: {tz:.2f}s, kept {kept_z:,}, "
              f"balanced={report['total']['balanced']})")
        print(f"ratio zhclip/baseline: {tb / tz:.2f}   (target >= 0.5; >= 500k rows/s per core)")


def rss_child(path: str) -> None:
    """Stage 1 alone in a fresh process, so its peak RSS is stage 1's own."""
    with tempfile.TemporaryDirectory() as tmp:
        base = peak_rss_mb()
        run_zhclip(Path(path), Path(tmp) / "z")
        # VmHWM, not ru_maxrss: the child's ru_maxrss starts at this parent's peak
        # (vfork), which for 10M generated rows was ~4.8 GB and hid stage 1 entirely.
        print(json.dumps({"peak_mb": peak_rss_mb(), "before_mb": base}))


def rss_compare(sizes: tuple[int, int] = (100_000, 1_000_000)) -> None:
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rows in sizes:
            path = Path(tmp) / f"laion-{rows}.parquet"
            make_input(path, rows)  # here, not in the measured process
            proc = subprocess.run([sys.executable, __file__, "--rss-child", str(path)],
                                  capture_output=True, text=True, check=True)
            res[rows] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{rows:>9,} rows: peak RSS {res[rows]['peak_mb']:,.0f} MB "
                  f"(of which {res[rows]['before_mb']:,.0f} MB before the job: imports)")
    small, large = sizes
    ratio = res[large]["peak_mb"] / res[small]["peak_mb"]
    print(f"peak RSS {large:,} / {small:,} rows: {ratio:.2f}   (target <= 1.2)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best of each is shown")
    ap.add_argument("--rss", action="store_true", help="compare peak RSS at 100k and 1M rows")
    ap.add_argument("--rss-sizes", type=int, nargs=2, default=(100_000, 1_000_000),
                    metavar=("SMALL", "LARGE"), help="row counts --rss compares, e.g. 1000000 10000000")
    ap.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        rss_child(args.rss_child)
    elif args.rss:
        rss_compare(tuple(args.rss_sizes))
    else:
        compare(args.rows, args.rounds)


if __name__ == "__main__":
    main()
