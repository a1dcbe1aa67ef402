"""Independent tasks on the local cores, results in the items' order: the executor of ``iosim.sweep``, the report's
sweeps and the tile chooser (``map_ordered``).

Workers are processes (``concurrent.futures.ProcessPoolExecutor``; forked on Linux, so a pool costs about 30 ms, not
a fresh interpreter's imports): ``fn`` and the items must pickle (module-level functions, ``functools.partial`` of
them; the read-only mappings of profiles and counts, ``types.MappingProxyType``, travel as copies). The results do
not depend on ``jobs``: each item is computed alone and they come back in the items' order. Each worker fills its
own caches (sympy's, the schedules'), so small batches run faster in one process (benchmarks/bench_cli.py). Ctrl-C
drops pending items, stops the running workers and re-raises in the caller.
"""

from __future__ import annotations

import copyreg
import os
import signal
from types import MappingProxyType
from typing import Callable, Iterable, TypeVar

from iosim.errors import IosimError



def _mapping_proxy(d: dict) -> MappingProxyType:
    return MappingProxyType(d)


copyreg.pickle(MappingProxyType, lambda m: (_mapping_proxy, (dict(m),)))

T = TypeVar("T")
R = TypeVar("R")


def check_jobs(jobs: int | None) -> int:
    """The worker count: ``jobs``, or every core (``os.cpu_count()``) for None; IosimError unless a positive integer."""
    jobs = (os.cpu_count() or 1) if jobs is None else jobs
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise IosimError(f"jobs must be a positive integer, got {jobs!r} (1 = run in this process)")
    return jobs


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: no traceback per worker


def map_ordered(fn: Callable[[T], R], items: Iterable[T], jobs: int | None = None,
                progress: Callable[[], None] | None = None) -> list[R]:
    """``[fn(x) for x in items]`` on ``jobs`` worker processes (None = every core, 1 = in this process, as is a
    single item). progress: called once per finished item, in this process."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    items = list(items)
    jobs = check_jobs(jobs)
    tick = progress or (lambda: None)
    if jobs == 1 or len(items) <= 1:
        out = []
        for x in items:
            out.append(fn(x))
            tick()
        return out
    results: list = [None] * len(items)
    ex = ProcessPoolExecutor(min(jobs, len(items)), initializer=_ignore_sigint)
    try:
        futures = {ex.submit(fn, x): i for i, x in enumerate(items)}
        for f in as_completed(futures):
            results[futures[f]] = f.result()
            tick()
    except BaseException:  # Ctrl-C (or a worker crash): drop pending items, stop the running ones
        workers = list((ex._processes or {}).values())  # Python ≥ 3.14 has ex.terminate_workers() for this
        ex.shutdown(wait=False, cancel_futures=True)
        for w in workers:
            w.terminate()
        raise
    ex.shutdown()
    return results
