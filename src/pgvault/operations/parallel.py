"""Running a few streams side by side in threads, all or nothing (``backup --jobs``, its restore).

Each task streams one object through a child program (pg_dump into the repository, an object
into pg_restore); the work is in the children and in zstd/age, which release the GIL.  The first
failure, or an interrupt of the caller (SIGTERM, Ctrl-C arrive in the main thread, which waits
here), calls ``abort`` so the other tasks' programs are stopped, cancels the tasks not yet begun,
and waits for the running ones to unwind (each discards what it was writing) before raising.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")

#: Seconds to wait for stopped tasks to unwind after an interrupt.
UNWIND_TIMEOUT = 60.0


def run_parallel(tasks: Sequence[Callable[[], T]], limit: int, *, abort: Callable[[], None]) -> list[T]:
    """The tasks' results in order; at most ``limit`` at a time."""
    if not tasks:
        return []
    pool = cf.ThreadPoolExecutor(max_workers=max(1, min(limit, len(tasks))), thread_name_prefix="stream")
    futures = [pool.submit(t) for t in tasks]
    try:
        done, _ = cf.wait(futures, return_when=cf.FIRST_EXCEPTION)
        for f in futures:
            if f in done and f.exception() is not None:
                f.result()  # raises the first failure, handled below like an interrupt
        return [f.result() for f in futures]
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        abort()
        cf.wait(futures, timeout=UNWIND_TIMEOUT)
        raise
    finally:
        pool.shutdown(wait=False)
