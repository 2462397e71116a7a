"""Run each shard's download in a child process, kept warm between shards.

Why a child process: decoding untrusted images is where a crawler can crash
(a decoder bug, memory exhaustion); in a child, that ends one attempt of one
shard with an error Beam can retry, not the Beam worker. The child also has
its own interpreter lock and a small heap, so the download threads do not
compete with the runner's own threads; this is how img2dataset runs its
Downloader too (one spawned process per worker), and what keeps zhclip's
throughput level with it.

A child whose parent dies (kill -9) notices within half a second and exits,
so an orphan never publishes outputs next to a rerun's.
"""

from __future__ import annotations

import atexit
import gc
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

_idle: list[ProcessPoolExecutor] = []
_all: list[ProcessPoolExecutor] = []
_lock = threading.Lock()


def _exit_when_orphaned(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(1)
        time.sleep(0.5)


def _init_worker(parent: int) -> None:
    from zhclip.pipeline.download.img2dataset_glue import img2dataset_module

    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()
    for name in ("downloader", "resizer", "writer"):
        img2dataset_module(name)  # OpenCV and albumentations: seconds, paid once per child
    gc.collect()
    gc.freeze()


def _run_shard(metadata_path: str, cfg_dict: dict, retry_failed: bool) -> dict:
    from zhclip.pipeline.core.config import config_from_dict
    from zhclip.pipeline.download.shard import download_shard

    return download_shard(metadata_path, config_from_dict(cfg_dict), retry_failed=retry_failed)


def _new_executor() -> ProcessPoolExecutor:
    executor = ProcessPoolExecutor(
        max_workers=1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(os.getpid(),),
    )
    _all.append(executor)
    return executor


def _shutdown() -> None:
    with _lock:
        for executor in _all:
            executor.shutdown(wait=False, cancel_futures=True)
        _all.clear()
        _idle.clear()


atexit.register(_shutdown)


def run_shard_in_child(metadata_path: str, cfg_dict: dict, retry_failed: bool) -> dict:
    """``download_shard`` in a warm child process; one child per concurrent caller.

    Exceptions raised in the child (e.g. BadUrlShard) are raised here. A child
    that died is replaced, and the shard is tried once more in a fresh one.
    """
    for attempt in range(2):
        with _lock:
            executor = _idle.pop() if _idle else _new_executor()
        try:
            result = executor.submit(_run_shard, metadata_path, cfg_dict, retry_failed).result()
        except BrokenProcessPool:
            executor.shutdown(wait=False, cancel_futures=True)
            if attempt == 1:
                raise
            continue
        except BaseException:
            with _lock:
                _idle.append(executor)
            raise
        with _lock:
            _idle.append(executor)
        return result
    raise AssertionError("unreachable")
