"""A command watched while it runs, for bench/scale.py: its process tree's peak memory and
its progress over time (rows done), from which first- and last-quarter rates are read.

Peak memory is taken two ways: the largest summed RSS of the whole tree (sampled
every 0.25 s; what a worker machine must hold) and the largest VmHWM of any one
process in it (the kernel's own high-water mark, see pipeline/core/memory.py).
"""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import threading
import time
from pathlib import Path


def _children(pid: int) -> list[int]:
    kids = []
    for path in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(path) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                kids.append(int(path.split("/")[2]))
        except (OSError, IndexError, ValueError):
            continue
    return kids


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(_children(p))
    return out


def _status_kb(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Watched:
    """A command in its own process group, with its tree's memory and progress sampled."""

    def __init__(self, cmd: list[str], progress=None, env=None, stdout: Path | None = None):
        self.cmd, self.progress, self.stdout = cmd, progress, stdout
        self.tree_rss_kb = 0
        self.max_hwm_kb = 0
        self.events: list[tuple[float, int]] = []  # (seconds since start, rows done)
        self.env = env

    def run(self, kill_at_rows: int | None = None, timeout: float = 7200) -> float:
        self.start = time.monotonic()
        sink = open(self.stdout, "w") if self.stdout else subprocess.DEVNULL  # noqa: SIM115
        proc = subprocess.Popen(
            self.cmd,
            start_new_session=True,
            env=self.env,
            stdout=sink,
            stderr=open(self.cmd_log(), "a"),
        )  # noqa: SIM115
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.25):
                pids = _tree(proc.pid)
                self.tree_rss_kb = max(self.tree_rss_kb, sum(_status_kb(p, "VmRSS") for p in pids))
                for p in pids:
                    self.max_hwm_kb = max(self.max_hwm_kb, _status_kb(p, "VmHWM"))
                if self.progress is not None:
                    done = self.progress()
                    if not self.events or done != self.events[-1][1]:
                        self.events.append((time.monotonic() - self.start, done))
                    if kill_at_rows is not None and done >= kill_at_rows:
                        os.killpg(proc.pid, signal.SIGKILL)
                        return

        watcher = threading.Thread(target=sample, daemon=True)
        watcher.start()
        try:
            rc = proc.wait(timeout=timeout)
        finally:
            stop.set()
            watcher.join()
        self.wall = time.monotonic() - self.start
        if self.progress is not None:
            self.events.append((self.wall, self.progress()))
        self.rc = rc
        return self.wall

    def cmd_log(self) -> str:
        return os.environ.get("SCALE_LOG", "/tmp/zhclip-scale.log")

    def quarters(self, total: int) -> dict:
        """Rows/s over the first and the last quarter of ``total`` rows (interpolated)."""
        ev = [(0.0, 0), *self.events]

        def at(rows: float) -> float:
            for (t0, r0), (t1, r1) in zip(ev, ev[1:], strict=False):
                if r1 >= rows:
                    return t0 + (t1 - t0) * ((rows - r0) / (r1 - r0) if r1 > r0 else 1.0)
            return ev[-1][0]

        q = total / 4
        first = q / max(1e-9, at(q))
        last = q / max(1e-9, at(total) - at(3 * q))
        return {
            "first_quarter_per_s": round(first, 1),
            "last_quarter_per_s": round(last, 1),
            "last_over_first": round(last / first, 3),
        }

    def memory(self) -> dict:
        return {
            "peak_tree_rss_mb": round(self.tree_rss_kb / 1024, 1),
            "peak_process_hwm_mb": round(self.max_hwm_kb / 1024, 1),
        }
