"""Asynchronous, parallel WAL archiving and prefetching restore (the default).

One ``archive_command`` process per segment cannot keep up with a busy server: each start pays
Python start-up plus one upload round trip, in series.  So, as pgBackRest's ``archive-async``:

* **push** (``archive_command``): the foreground ``wal push %p`` makes sure a background pusher
  runs, then waits until the pusher has confirmed *this* segment (a ``<name>.ok`` file in the
  spool holding its size and SHA-256, and the file's identity when that can vouch for the bytes).
  It returns 0 only if the record describes the bytes at %p, so "0" still means "these exact
  bytes are durable in the repository", as the docs demand.  Usually that check already ran in
  :mod:`~pgvault.operations.archive.confirm`'s fast path, before the CLI was even imported; this
  module is what runs when it could not decide.
* the **pusher** (``wal archive-daemon``) scans ``pg_wal/archive_status/*.ready`` and uploads the
  backlog oldest first with ``archive.parallel`` uploads in flight, each through the ordinary
  :func:`~pgvault.operations.archive.push_fetch.push` (same no-overwrite rule, same identity checks).  A
  failure is written as ``<name>.error``, which the foreground reports and PostgreSQL retries.
  It exits after a quiet period; the next foreground call starts it again.
* **fetch** (``restore_command``): the foreground serves a segment from the spool when the
  **prefetcher** (``wal prefetch-daemon``) has already downloaded and verified it, else fetches it
  itself; either way it (re)starts the prefetcher, which keeps the next ``restore.prefetch``
  segments ready.  Exit codes are unchanged: only the repository's confirmed absence is 1.

State lives in ``archive.spool_dir`` (default ``PGDATA/pg_wal/pgvault``: local, private to the
cluster, excluded from base backups).  One pusher / prefetcher per spool, by ``flock``.  What a
``wal push`` / ``wal fetch`` run by hand as root creates there takes the owner of the directory
above (:mod:`pgvault.fs_owner`), so the archiver (postgres) can still lock, write and remove it.
"""

from __future__ import annotations

import concurrent.futures as cf
import errno
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pgvault import fs_owner, log
from pgvault.config import Settings
from pgvault.errors import PgvaultError, StorageError, error_of_kind
from pgvault.fs import try_lock_file, write_atomic
from pgvault.operations.archive import confirm, prefetched
from pgvault.pg import wal
from pgvault.repository.wal_record import PushResult

if TYPE_CHECKING:
    from pgvault.operations.context import Context
    from pgvault.pipeline import StreamResult

# The foreground of ``wal push`` runs once per segment and PostgreSQL waits for it: it imports
# only what confirming needs (no pipeline, no storage client); the pushing code is imported by
# the pusher, and by the foreground only when it has to push itself.

POLL = 0.005  # the foreground's look for its record: PostgreSQL waits for each segment
IDLE_EXIT = 30.0  # the pusher stays this long after the backlog is empty
PREFETCH_IDLE_EXIT = 15.0


def spool_dir(settings: Settings, data_dir: Path) -> Path:
    """Per repository and cluster: a pusher or a record made for one repository must never confirm
    a segment for another (archive_command may be pointed elsewhere while a pusher still runs)."""
    base = Path(settings.spool_dir) if settings.spool_dir else data_dir / "pg_wal" / "pgvault"
    key = hashlib.sha256(f"{settings.repository_url}\n{settings.cluster}".encode()).hexdigest()[:12]
    return base / key


def _write_atomic(path: Path, data: bytes) -> None:
    # Not fsynced: a spool record lost in a crash only costs a re-push (push is idempotent), and
    # an fsync per segment would slow archiving for nothing.  As root: the spool's owner's.
    write_atomic(path, data, durable=False, adopt=True)


def _spool_error(spool: Path, e: OSError) -> StorageError:
    """The foreground's error for a spool it cannot write: nothing was (or can be) confirmed."""
    hint = f"free space in {spool}, or point archive.spool_dir at a file system with room (or set archive.async: false)"
    if e.errno in (errno.EACCES, errno.EPERM):
        # What an older pgvault run by hand as root left there (now root's files take the spool's owner).
        hint = f"{spool} or a file in it belongs to another user: give it back to the data directory's owner (chown -R)"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageError(f"disk full in the WAL spool {spool} (no space left on device): the background pusher "
                            "cannot record what it uploaded, so nothing is confirmed", hint=hint)
    return StorageError(f"cannot write the WAL spool {spool}: {e.strerror or e}", hint=hint)


def _probe_spool(spool: Path) -> None:
    """Raise the spool's error if a small record can no longer be written there."""
    probe = spool / f".probe.{os.getpid()}"
    try:
        with open(probe, "wb", buffering=0) as f:
            f.write(b"x" * 512)
    except OSError as e:
        raise _spool_error(spool, e) from None
    finally:
        probe.unlink(missing_ok=True)


def _is_locked(path: Path) -> bool:
    with try_lock_file(path) as mine:
        return not mine


def _pusher_runs(paths: _Paths) -> bool:
    try:
        return _is_locked(paths.lock)
    except OSError as e:  # e.g. a lock only root can open: fail with the reason, not an internal error
        raise _spool_error(paths.spool, e) from None


def spawn(args: list[str], spool: Path, log_name: str) -> None:
    """Start ``pgvault ARGS`` detached (own session, no inherited pipes) with our environment."""
    fs_owner.makedirs(spool)
    with open(spool / log_name, "ab") as err:
        fs_owner.adopt(spool / log_name, err.fileno())
        subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "pgvault", *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=err, start_new_session=True, close_fds=True,
        )


# --- push -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Paths:
    spool: Path

    @property
    def done(self) -> Path:
        return self.spool / "archive"

    @property
    def lock(self) -> Path:
        return self.spool / "pusher.lock"

    def ok(self, name: str) -> Path:
        return self.done / f"{name}.ok"

    def error(self, name: str) -> Path:
        return self.done / f"{name}.error"


def is_ready(data_dir: Path, path: str) -> bool:
    """True when PostgreSQL has marked this file ready for archiving (only those go async; a file
    pushed by hand is pushed in the foreground)."""
    return (data_dir / "pg_wal" / "archive_status" / f"{Path(path).name}.ready").exists()


def push_async(settings: Settings, path: str, *, pgdata: str | None, passthrough: list[str],
               make_context: Callable[[], Context], clock: Callable[[], float] = time.monotonic) -> PushResult:
    """Foreground of ``wal push`` in async mode: return once the pusher confirmed these bytes."""
    data_dir = Path(pgdata) if pgdata else Path.cwd()
    src = Path(path) if Path(path).is_absolute() else data_dir / path
    name = src.name
    paths = _Paths(spool_dir(settings, data_dir))
    try:
        fs_owner.makedirs(paths.done)
    except OSError as e:
        raise _spool_error(paths.spool, e) from None
    deadline = clock() + settings.archive_wait_timeout
    spawned_at: float | None = None
    while True:
        ok = paths.ok(name)
        if ok.exists():
            confirmed = _confirm(ok, src)
            if confirmed is not None:
                return confirmed
            break  # a stale record for other bytes: let the synchronous push compare with the repository
        err = paths.error(name)
        if err.exists():
            try:
                doc = json.loads(err.read_text(encoding="utf-8", errors="replace"))
            except (OSError, ValueError):
                doc = {}
            err.unlink(missing_ok=True)
            raise error_of_kind(str(doc.get("kind", "storage")), f"background push of {name} failed: {doc.get('message')}",
                                hint=f"the pusher's log is {paths.spool / 'pusher.log'}")
        if not _pusher_runs(paths) and (spawned_at is None or clock() - spawned_at > 5.0):
            if spawned_at is not None:
                # The pusher we started is gone without a word about this segment.  A full spool
                # is the usual reason (it cannot write the .ok, nor the .error): fail, PostgreSQL
                # retries; never confirm what no record vouches for.
                _probe_spool(paths.spool)
            if spawned_at is not None and clock() > deadline - settings.archive_wait_timeout / 2:
                break  # the pusher keeps dying: push in the foreground, which reports the real error
            spawn(["wal", "archive-daemon", "--pgdata", str(data_dir), *passthrough], paths.spool, "pusher.log")
            spawned_at = clock()
        if clock() > deadline:
            raise StorageError(f"{name} was not confirmed by the background pusher within "
                               f"{settings.archive_wait_timeout:.0f}s", hint=f"see {paths.spool / 'pusher.log'}")
        time.sleep(POLL)
    from pgvault.operations.archive.push_fetch import push

    return push(make_context(), str(src), pgdata=str(data_dir))


def _confirm(ok: Path, src: Path) -> PushResult | None:
    """The pusher's record, if it describes exactly the bytes of ``src``; the record is consumed.

    See :mod:`~pgvault.operations.archive.confirm`: the recorded identity of an unmodified file
    vouches for its bytes, anything else is hashed and compared."""
    record = confirm.read_record(str(ok))
    if record is None:
        return None
    ok.unlink(missing_ok=True)
    if not confirm.describes(record, str(src)):
        return None
    return PushResult(src.name, record.key, record.already_archived, record.raw_size, record.stored_size,
                      record.raw_sha256)


def _push_one(ctx: Context, path: Path, data_dir: Path,
              cache: dict[str, Any]) -> tuple[PushResult, tuple[int, ...] | None]:
    from pgvault.operations.archive.push_fetch import push
    from pgvault.repository.cluster import read_cluster_info

    read_from = time.time_ns()  # before the first stat: see confirm.vouched_identity
    before = os.stat(path)
    r = push(ctx, str(path), pgdata=str(data_dir), known=cache.get("cluster"))
    if "cluster" not in cache:  # one read of the descriptor for the pusher's lifetime, not one per segment
        cache["cluster"] = read_cluster_info(ctx.storage, ctx.cluster)
    return r, confirm.vouched_identity(before, os.stat(path), read_from)


def postmaster_alive(data_dir: Path) -> bool:
    """True while the server of ``data_dir`` runs: ``postmaster.pid`` exists *and* names a live
    process.  The file alone is not enough: ``kill -9`` of the postmaster leaves it behind."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        return True  # being written at start-up, or unreadable: never give up work on a guess
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    return True


class _ServerWatch:
    """:func:`postmaster_alive`, asked at most once per ``every`` seconds (the loops poll every 50 ms)."""

    def __init__(self, data_dir: Path, clock: Callable[[], float], every: float = 1.0) -> None:
        self.data_dir, self.clock, self.every = data_dir, clock, every
        self.checked_at, self.alive = -1e9, True

    def __call__(self) -> bool:
        if self.clock() - self.checked_at >= self.every:
            self.checked_at, self.alive = self.clock(), postmaster_alive(self.data_dir)
        return self.alive


def run_pusher(ctx: Context, data_dir: Path, *, idle_exit: float = IDLE_EXIT,
               clock: Callable[[], float] = time.monotonic) -> int:
    """The background pusher: upload every .ready file (oldest first, in parallel) until idle,
    or until the server is gone and what it left has been pushed once.

    "Gone" is noticed within a second (:func:`postmaster_alive`); from then on nothing is retried
    or re-pushed, so a pusher never outlives a killed postmaster by more than its last uploads
    (a failing repository used to keep it retrying for ever).  The next server start offers the
    remaining .ready files again."""
    logger = log.get()
    server_alive = _ServerWatch(data_dir, clock)
    paths = _Paths(spool_dir(ctx.settings, data_dir))
    status = data_dir / "pg_wal" / "archive_status"
    with try_lock_file(paths.lock) as mine:
        if not mine:
            return 0  # another pusher serves this spool
        fs_owner.makedirs(paths.done)
        failed_at: dict[str, float] = {}
        # Confirmed recently: the foreground consumes the .ok and PostgreSQL renames .ready to .done
        # a moment later; still ready after that (a crash before the rename) means push it again.
        pushed: dict[str, float] = {}
        cluster_cache: dict[str, Any] = {}
        in_flight: dict[cf.Future[tuple[PushResult, tuple[int, ...] | None]], str] = {}
        last_work = clock()
        with cf.ThreadPoolExecutor(max_workers=ctx.settings.archive_parallel, thread_name_prefix="push") as pool:
            while True:
                if not status.is_dir():
                    return 0  # the cluster is gone
                ready = sorted(p.name[: -len(".ready")] for p in status.iterdir() if p.name.endswith(".ready"))
                busy = set(in_flight.values())
                gone = not server_alive()
                for name in ready:
                    if len(in_flight) >= ctx.settings.archive_parallel:
                        break
                    if gone and (name in pushed or name in failed_at):
                        continue  # the server is gone: push what it left once, retry nothing
                    if name in busy or clock() - pushed.get(name, -1e9) < 5.0 or paths.ok(name).exists() or clock() - failed_at.get(name, -1e9) < 1.0:
                        continue
                    paths.error(name).unlink(missing_ok=True)
                    in_flight[pool.submit(_push_one, ctx, data_dir / "pg_wal" / name, data_dir, cluster_cache)] = name
                if in_flight:
                    last_work = clock()
                    done, _ = cf.wait(list(in_flight), timeout=0.05, return_when=cf.FIRST_COMPLETED)
                    for fut in done:
                        name = in_flight.pop(fut)
                        try:
                            r, file_id = fut.result()
                        except Exception as e:  # noqa: BLE001 - reported to the foreground, which fails
                            failed_at[name] = clock()
                            kind = e.kind if isinstance(e, PgvaultError) else "internal"
                            text = e.message if isinstance(e, PgvaultError) else f"{type(e).__name__}: {e}"
                            logger.error("push of %s failed: %s", name, text)
                            record, body = paths.error(name), json.dumps({"kind": kind, "message": text}).encode()
                        else:
                            pushed[name] = clock()
                            record, body = paths.ok(name), confirm.format_record(
                                raw_sha256=r.raw_sha256, raw_size=r.raw_size, key=r.key, file_id=file_id,
                                stored_size=r.stored_size, already_archived=r.already_archived)
                        try:
                            _write_atomic(record, body)
                        except OSError as e:
                            # A full spool: no segment can be confirmed (nor its failure reported)
                            # from here.  Stop: the waiting foreground notices and fails, and each
                            # later wal push starts a pusher again once there is room.
                            logger.error("cannot write %s, stopping: %s", record, e.strerror or e)
                            return 1
                    continue
                _sweep(paths, status)
                if clock() - last_work > idle_exit or gone:
                    return 0
                time.sleep(0.05)


def _sweep(paths: _Paths, status: Path) -> None:
    """Drop records of segments PostgreSQL no longer offers (already confirmed or gone)."""
    for p in paths.done.iterdir():
        name = p.name.rsplit(".", 1)[0]
        if p.suffix in (".ok", ".error") and not (status / f"{name}.ready").exists():
            if time.time() - p.stat().st_mtime > 60:
                p.unlink(missing_ok=True)


# --- fetch ----------------------------------------------------------------------------------------


def fetch_spool_dir(settings: Settings, data_dir: Path) -> Path:
    """Where the prefetcher keeps what it downloaded (and ``wal fetch`` serves it from)."""
    return spool_dir(settings, data_dir) / "fetch"


def _fetch_dir(ctx: Context, data_dir: Path) -> Path:
    return fetch_spool_dir(ctx.settings, data_dir)


def fetch_prefetching(ctx: Context, name: str, destination: str, *, pgdata: str | None,
                      passthrough: list[str]) -> StreamResult | None:
    """Foreground of ``wal fetch`` with prefetch: serve from the spool when ready, else fetch."""
    from pgvault.operations.archive.push_fetch import fetch

    data_dir = Path(pgdata) if pgdata else Path.cwd()
    if wal.classify_or_none(name) is not wal.WalFileKind.SEGMENT:
        return fetch(ctx, name, destination, pgdata=pgdata)
    spool = _fetch_dir(ctx, data_dir)
    fs_owner.makedirs(spool)
    _write_atomic(spool / ".want", name.encode())
    dest = Path(destination) if Path(destination).is_absolute() else data_dir / destination
    running = _is_locked(spool / "prefetch.lock")
    served: StreamResult | None = None
    try:
        # Only what a running prefetcher verified and recorded (see prefetched.py); same file
        # system as pg_wal by default
        taken = running and prefetched.take(str(spool), name, str(dest))
    except OSError:  # another file system: fetch it (the prefetched file stays for cleanup)
        taken = False
    if not taken:
        served = fetch(ctx, name, destination, pgdata=pgdata)
    if not running:
        spawn(["wal", "prefetch-daemon", "--pgdata", str(data_dir), *passthrough], spool, "prefetch.log")
    return served


def run_prefetcher(ctx: Context, data_dir: Path, *, idle_exit: float = PREFETCH_IDLE_EXIT,
                   clock: Callable[[], float] = time.monotonic) -> int:
    """Keep the ``restore.prefetch`` segments after the last one asked for ready in the spool."""
    from pgvault.repository.cluster import read_cluster_info

    spool = _fetch_dir(ctx, data_dir)
    depth = ctx.settings.restore_prefetch
    info = read_cluster_info(ctx.storage, ctx.cluster)
    seg_size = info.wal_segment_size if info and info.wal_segment_size else 0
    if depth <= 0 or not seg_size:
        return 0
    with try_lock_file(spool / "prefetch.lock") as mine:
        if not mine:
            return 0
        _clear(spool)  # a killed prefetcher's files: only what this one verifies is ever served
        last_want, last_change = "", clock()
        absent: dict[str, float] = {}
        server_alive = _ServerWatch(data_dir, clock)  # recovery killed with -9: stop within a second
        with cf.ThreadPoolExecutor(max_workers=min(depth, ctx.settings.archive_parallel), thread_name_prefix="prefetch") as pool:
            while clock() - last_change < idle_exit and server_alive():
                try:
                    want = (spool / ".want").read_text().strip()
                except OSError:
                    return 0
                if want != last_want:
                    last_want, last_change = want, clock()
                tli, segno = wal.parse_segment_name(want, seg_size)
                window = [wal.segment_name(tli, segno + i, seg_size) for i in range(1, depth + 1)]
                keep = {want, *window}  # ``want`` itself may be being moved out by the foreground right now
                _clear(spool, keep)  # consumed or passed by recovery
                todo = [n for n in window if not (spool / n).exists() and clock() - absent.get(n, -1e9) > 2.0]
                futures = {pool.submit(_prefetch_one, ctx, n, spool, data_dir): n for n in todo}
                for fut in cf.as_completed(futures):
                    if not fut.result():
                        absent[futures[fut]] = clock()
                time.sleep(0.05)
        _clear(spool)
    return 0


def _clear(spool: Path, keep: set[str] | frozenset[str] = frozenset()) -> None:
    """Remove the prefetched segments (records first) not in ``keep``."""
    for p in sorted(spool.iterdir(), key=lambda p: not p.name.endswith(".ok")):
        stem = p.name.removesuffix(".ok")
        if wal.classify_or_none(stem) is wal.WalFileKind.SEGMENT and stem not in keep:
            p.unlink(missing_ok=True)


def _prefetch_one(ctx: Context, name: str, spool: Path, data_dir: Path) -> bool:
    """Download and verify one segment into the spool, and record it (what ``wal fetch`` serves);
    False when it is not (yet) archived."""
    from pgvault.operations.archive.push_fetch import fetch
    from pgvault.storage import ObjectNotFound

    try:
        r = fetch(ctx, name, str(spool / name), pgdata=str(data_dir), foreground=False)
        prefetched.write_record(str(spool), name, raw_sha256=r.raw_sha256, raw_size=r.raw_size)
        return True
    except ObjectNotFound:
        return False
    except (PgvaultError, OSError, ValueError) as e:
        # Leave it to the foreground, which fetches it itself and reports the error to PostgreSQL.
        log.get().warning("prefetch of %s failed: %s", name, getattr(e, "message", e))
        return False


def passthrough_args(config: str | None, cluster: str | None, repository: str | None) -> list[str]:
    """The command-line settings a daemon needs to see the same repository (no secrets)."""
    out: list[str] = []
    for flag, value in (("--config", config), ("--cluster", cluster), ("--repository", repository)):
        if value:
            out += [flag, value]
    return out


__all__ = ["push_async", "run_pusher", "fetch_prefetching", "run_prefetcher", "passthrough_args", "is_ready"]
