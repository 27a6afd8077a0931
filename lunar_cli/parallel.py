"""Running one function over many jobs in worker processes, in order, safely."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterator, Sequence, TypeVar

J = TypeVar("J")
R = TypeVar("R")


def cpu_cores() -> int:
    """Return how many cores this process may run on (its affinity, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _init_worker() -> None:
    import cv2  # in the workers only: every lunar command imports this module, lunar --help included

    cv2.setNumThreads(1)  # one process per core already; cv2's own threads would oversubscribe


def map_in_processes(fn: Callable[[J], R], jobs: Sequence[J], workers: int, max_chunk: int = 16) -> Iterator[R]:
    """Yield ``fn(job)`` for each job, in order, using ``workers`` processes (<=1: in this process).

    ``fn`` must be a module-level function (it is sent to the workers by name).
    """
    if workers <= 1 or len(jobs) <= 1:
        yield from map(fn, jobs)
        return

    # forkserver/spawn: forking a process that already runs torch or rich threads can deadlock.
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method), initializer=_init_worker)
    chunk = max(1, min(max_chunk, len(jobs) // (workers * 8)))
    try:
        yield from pool.map(fn, jobs, chunksize=chunk)
    finally:
        # On Ctrl-C or an error, drop the queued chunks instead of working through them first.
        pool.shutdown(wait=True, cancel_futures=True)

