"""Worker processes that die with their parent, and the lock that keeps two layouts apart.

``restore-cluster`` unpacks base backup parts in forked worker processes.  A forked child does not
die with its parent: after ``kill -9`` of ``restore-cluster`` its workers went on unpacking for
minutes, into a directory a rerun was meanwhile emptying (``--force``) and filling.  So:

* :func:`worker_pool` starts each worker with ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` (Linux): the
  kernel kills it the moment the thread that forked it (ours, which waits for the pool) is gone,
  however it went.  ``getppid()`` is checked right after, for a parent that died before the call.
  Elsewhere (macOS, BSD: no PDEATHSIG) a watchdog thread in the worker polls ``getppid()`` every
  second instead.  When the parent fails or is interrupted, it kills its workers itself before it
  removes what they were writing, rather than waiting for them to finish (``shutdown(wait=True)``).
* :func:`layout_lock`: an ``flock`` on ``.<name>.pgvault-lock`` beside the data directory, taken
  before anything in the directory is touched.  The workers inherit the descriptor, and an
  ``flock`` lasts until the last descriptor of it is closed, so a rerun waits while any process of
  the earlier run, parent or worker, still lives; it never empties a directory being written to.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pgvault import log
from pgvault.errors import LockedError
from pgvault.fs import flock

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
LOCK_WAIT = 10.0  # seconds a rerun waits for an earlier run's processes to be gone


def die_with_parent(parent_pid: int) -> None:
    """Pool initializer: make this worker die when ``parent_pid`` does."""
    if not _pdeathsig():
        threading.Thread(target=_watch_parent, args=(parent_pid,), name="parent-watch", daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before the kernel was told: we are an orphan already
        os._exit(1)


def _pdeathsig() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    import ctypes  # here, not at import: ~10 ms, and only a worker child needs it

    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the process's own symbols hold libc; no ldconfig -p
        return int(libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os._exit(1)


@contextmanager
def worker_pool(workers: int) -> Iterator[cf.ProcessPoolExecutor]:
    """A forked process pool whose workers die with this process and are killed when the body fails.

    Forked, not spawned: the workers inherit the imported modules and the layout lock's descriptor."""
    import multiprocessing

    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"),
                                  initializer=die_with_parent, initargs=(os.getpid(),))
    try:
        yield pool
    except BaseException:
        # What they write is about to be removed, and waiting could take minutes: stop them now.
        kill_workers(pool)
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def kill_workers(pool: cf.ProcessPoolExecutor) -> None:
    """SIGKILL every worker of ``pool`` and reap it."""
    procs = list((getattr(pool, "_processes", None) or {}).values())  # no public API before Python 3.14
    for p in procs:
        try:
            p.kill()
        except (OSError, ValueError):
            pass  # already gone
    for p in procs:
        p.join(timeout=10)


def _lock_paths(data_dir: Path) -> list[Path]:
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]
    # Beside the data directory first; the temporary directory when its parent is not ours to
    # write (an empty mount point owned by the database user) or the file there not ours to open.
    return [data_dir.parent / f".{data_dir.name}.pgvault-lock",
            Path(tempfile.gettempdir()) / f"pgvault-layout-{digest}.lock"]


def _open_lock(data_dir: Path) -> tuple[int, Path] | None:
    for path in _lock_paths(data_dir):
        try:
            # Read-only is enough for flock, and 0644 lets root and the database's OS user, who may
            # take turns restoring into the same path, share one lock file.  CLOEXEC: a postmaster
            # started afterwards must not hold it.
            return os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644), path
        except OSError:
            continue
    return None


@contextmanager
def layout_lock(data_dir: Path, *, wait: float = LOCK_WAIT) -> Iterator[None]:
    """Hold the layout lock of ``data_dir`` (an absolute path) for the body; :class:`LockedError`
    (exit 7) if another run, or the workers of a killed one, still hold it after ``wait`` seconds.

    Released by closing our descriptor, never by ``LOCK_UN``: that would release it for workers
    that still run as well.  The lock file stays (removing it would race with a waiting rerun)."""
    opened = _open_lock(data_dir)
    if opened is None:  # a safety net only (workers die with us anyway): never a reason to refuse
        log.get().warning("no lock file for %s could be created; not guarding against a concurrent layout", data_dir)
        yield
        return
    fd, path = opened
    try:
        if not flock(fd, wait=wait, waiting=lambda: log.get().warning(
                "waiting for an earlier restore-cluster into %s to be gone", data_dir)):
            raise LockedError(
                f"another restore-cluster is writing into {data_dir} (or the unpack workers of an "
                f"interrupted one are still exiting)", hint=f"wait for it to finish; the lock is {path}",
            )
        yield
    finally:
        os.close(fd)
