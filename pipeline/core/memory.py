"""Peak resident memory of this process, measured so a parent's peak cannot leak in; and
handing freed heap back to the system between a worker's work items.

``getrusage(RUSAGE_SELF).ru_maxrss`` carries the high-water mark of the
address space a process was exec'd from: Python's subprocess starts children
with vfork, so a child of a 5 GB parent reports at least 5 GB however little
it uses (bench/metadata.py once "measured" its parent's input generator this
way). Linux keeps the process's own high-water mark as VmHWM in
/proc/self/status; elsewhere ru_maxrss is the best there is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
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


@functools.cache
def _glibc_trim():
    """glibc's ``malloc_trim``, or None off glibc (musl, macOS: nothing to call)."""
    name = ctypes.util.find_library("c")
    try:
        trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_free_memory() -> bool:
    """Give the heap's free pages back to the system; True if glibc did.

    Decoding a shard's images from several threads leaves glibc's per-thread
    arenas holding their freed pages, so a worker's resident memory creeps up
    shard after shard until every arena has seen its worst shard: stage 3 went
    from 1.0 to 1.55 GB over its first 40 shards and kept it. Trimming after each
    work item keeps it where one shard needs (1.07 GB in that test) for a few
    milliseconds a shard.
    """
    trim = _glibc_trim()
    return bool(trim(0)) if trim is not None else False
