"""A loopback server run in a child process: started, read for its one ready line, stopped.

Benchmarks run their servers out of process so that serving does not compete
with the client under test for one interpreter's GIL; the image server and the
simulated web share this life cycle.
"""

from __future__ import annotations

import subprocess


class ChildServer:
    """Base of the out-of-process servers; a context manager (``__exit__`` stops the child)."""

    _proc: subprocess.Popen | None = None

    def _start(self, args: list[str], what: str, ready) -> str:
        """Start ``args``; return its first stdout line once ``ready(line)`` accepts it."""
        self._proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        line = self._proc.stdout.readline().strip()
        if not ready(line):
            self._proc.kill()
            self._proc.wait(timeout=10)
            self._proc = None
            raise RuntimeError(f"{what} did not start (said {line!r})")
        return line

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
            self._proc = None
