"""Peak resident memory of this process, measured so a parent's peak cannot leak in.

``getrusage(RUSAGE_SELF).ru_maxrss`` carries the high-water mark of the
address space a process was exec'd from: Python's subprocess starts children
with vfork, so a child of a 5 GB parent reports at least 5 GB however little
it uses (bench/metadata.py once "measured" its parent's input generator this
way). Linux keeps the process's own high-water mark as VmHWM in
/proc/self/status; elsewhere ru_maxrss is the best there is.
"""

from __future__ import annotations

import resource
import sys


def peak_rss_mb() -> float:
    """This process's own peak resident set size, in MiB."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, kB elsewhere
