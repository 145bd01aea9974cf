"""``pgvault repo sync``: copy every finished backup and every archived WAL file of a cluster from
one configured repository (the primary, by default) into another (a second region's).

What is copied, in which order, and why (record before object, WAL before backups, manifest last,
nothing overwritten) is decided in :mod:`pgvault.policy.sync`; this module lists, reads, streams
and verifies.  Stored bytes are copied as they are (compressed and encrypted): no key is needed,
and each object is checked on the fly against the stored size and sha256 its record or manifest
carries, before the target makes it visible.  Objects are streamed in chunks (memory stays small
whatever their size), several at a time (``parallel``).

A run holds the target's ``sync`` lock, so two copies into one repository never race; a run killed
at any point leaves at most unfinished writes (invisible, swept by ``expire``) and records without
objects younger than a run; the next run picks up where it stopped and copies nothing twice.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import datetime as dt
import functools
import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pgvault import log
from pgvault.errors import ConfigError, IntegrityError, NotFoundError, PgvaultError
from pgvault.operations.context import Context, build_context
from pgvault.output import human_bytes
from pgvault.pg import wal
from pgvault.policy.sync import ObjectState, WalFiles, object_action, plan_backups, plan_wal
from pgvault.procs import random_id
from pgvault.repository import layout
from pgvault.repository.archive_scan import restore_point_key, stored_name
from pgvault.repository.cluster import ClusterInfo, ensure_cluster, read_cluster_info
from pgvault.repository.locks import RepositoryLock
from pgvault.repository.manifest import LogicalManifest
from pgvault.repository.physical import PhysicalManifest
from pgvault.repository.sync_records import save_sync_record
from pgvault.repository.wal_record import WalRecord
from pgvault.storage import ObjectExists, ObjectNotFound, Storage
from pgvault.storage.base import place

LOCK_OPERATION = "sync"
CHUNK = 1 << 20


@dataclass
class SyncStats:
    """What one run did; counters are updated by the copying threads under ``lock``."""

    wal_copied: int = 0
    wal_already: int = 0
    wal_unfinished_on_source: int = 0
    expired_on_source: int = 0  # WAL files and backups listed, then deleted by an expire on the source
    restore_points_copied: int = 0
    backups_copied: int = 0
    backups_already: int = 0
    objects_copied: int = 0
    objects_verified: int = 0  # already on the target (a run cut short): hashed, found identical
    bytes_copied: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self.lock:
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)

    def to_json(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "lock"}


@dataclass(frozen=True)
class SyncResult:
    cluster: str
    source: str  # repository names
    target: str
    source_url: str
    target_url: str
    run_id: str
    started_at: dt.datetime
    finished_at: dt.datetime
    stats: SyncStats
    record_key: str | None

    @property
    def seconds(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()

    def to_json(self) -> dict[str, Any]:
        return {"cluster": self.cluster, "source": self.source, "target": self.target, "source_url": self.source_url,
                "target_url": self.target_url, "run_id": self.run_id, "started_at": self.started_at.isoformat(),
                "finished_at": self.finished_at.isoformat(), "seconds": round(self.seconds, 3),
                "mb_per_second": round(self.stats.bytes_copied / 1e6 / max(self.seconds, 1e-6), 2),
                **self.stats.to_json(), "record": self.record_key}


class _Progress:
    """A line on stderr (the log) at most every ``every`` seconds."""

    def __init__(self, stats: SyncStats, every: float = 5.0) -> None:
        self.stats, self.every, self.start = stats, every, time.monotonic()
        self.last = self.start
        self.total_wal = self.total_objects = 0

    def tick(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.every:
            return
        self.last = now
        s = self.stats
        rate = s.bytes_copied / max(now - self.start, 1e-6)
        log.get().info("repo sync: WAL %d/%d, backup objects %d/%d, %s copied (%s/s)",
                       s.wal_copied, self.total_wal, s.objects_copied + s.objects_verified, self.total_objects,
                       human_bytes(s.bytes_copied), human_bytes(int(rate)))


def sync_repository(ctx: Context, target_name: str, *, parallel: int = 4,
                    open_target: Callable[[str], Storage] | None = None) -> SyncResult:
    """Copy what ``ctx``'s repository holds for its cluster into the configured repository
    ``target_name``.  :class:`IntegrityError` when an object differs from its checksums (on the
    source) or the target holds a different object under a key to be written; the run still
    copies everything else it can, and never overwrites."""
    settings = ctx.settings
    if target_name == settings.repository_name:
        raise ConfigError([f"repo sync: source and target are the same repository ({target_name!r})"])
    target_settings = settings.with_repository(target_name)
    dst = open_target(target_name) if open_target else build_context(target_settings).storage
    src, cluster = ctx.storage, ctx.cluster
    if place(src) == place(dst):
        # Two names for one place: the "copy" would find everything there, report success and a
        # lag of 0 -- a second region that does not exist.
        raise ConfigError([f"repo sync: {settings.repository_name!r} and {target_name!r} are the same place "
                           f"({dst.url})"], hint=f"give repositories.{target_name}.url another bucket or directory")
    info = read_cluster_info(src, cluster)
    if info is None:
        raise NotFoundError(f"cluster {cluster!r} has nothing in {src.url} to copy",
                            hint="check --cluster and the source repository (--repository)")
    started = dt.datetime.now(dt.UTC)
    run_id = f"{started:%Y%m%dT%H%M%S%fZ}-{random_id()[:8]}"  # microseconds: names sort by start
    stats = SyncStats()
    progress = _Progress(stats)
    error: str | None = None
    record_key = None
    with RepositoryLock(dst, cluster, LOCK_OPERATION):
        try:
            _copy_descriptors(src, dst, cluster, info)
            with cf.ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="sync") as pool:
                copier = _Copier(src, dst, cluster, stats, progress, pool)
                try:
                    # The backups are listed *before* the WAL: a base backup's manifest is written
                    # after its WAL was archived, so every backup in this listing has its WAL in the
                    # WAL listing that follows.  (Listed after the WAL copy, a backup finished
                    # meanwhile was copied without the WAL archived after the WAL listing.)
                    listed = copier.source_backups()
                    copier.wal(info)  # raises before any backup is copied if WAL failed: no backup without its WAL
                    copier.restore_points()
                    copier.backups(listed)
                except BaseException:
                    # Ctrl-C / SIGTERM (or an error) in the main thread: the copies under way stop
                    # within a chunk, their writes aborted, instead of running to the end of
                    # objects of gigabytes while the pool's exit waits for them.
                    copier.cancel.set()
                    raise
        except BaseException as e:  # an error, or Ctrl-C / SIGTERM: the record says the run did not complete
            error = e.message if isinstance(e, PgvaultError) else f"{type(e).__name__}: {e}".rstrip(": ")
            raise
        finally:
            finished = dt.datetime.now(dt.UTC)
            progress.tick(force=True)
            doc = {"run_id": run_id, "source": settings.repository_name, "source_url": src.url,
                   "target": target_name, "started_at": started.isoformat(), "finished_at": finished.isoformat(),
                   "ok": error is None, "error": log.redact(error) if error else None, **stats.to_json()}
            try:
                record_key = save_sync_record(dst, cluster, run_id, started, doc)
            except PgvaultError as e:  # the copy's outcome stands; only status's "last sync" misses it
                log.get().warning("could not record the sync run in %s: %s", dst.url, e.message)
    return SyncResult(cluster, settings.repository_name, target_name, src.url, dst.url, run_id, started, finished,
                      stats, record_key)


def _copy_descriptors(src: Storage, dst: Storage, cluster: str, info: ClusterInfo) -> None:
    """pgvault.json and cluster.json, create-only; a target that belongs to another cluster is refused."""
    for key in (layout.DESCRIPTOR_KEY, layout.cluster_key(cluster)):
        try:
            dst.put_if_absent(key, src.read_bytes(key))
        except ObjectExists:
            pass
    there = read_cluster_info(dst, cluster)
    if there is None or there.system_identifier != info.system_identifier:
        raise ConfigError([f"cluster {cluster!r} in {dst.url} belongs to system identifier "
                           f"{there.system_identifier if there else None}, but in {src.url} to {info.system_identifier}"],
                          hint="a repository holds one PostgreSQL cluster per cluster name; check the target's URL")
    if info.wal_segment_size and there.wal_segment_size is None:
        # The source gained its segment size when WAL was first archived; the copy follows, or its
        # WAL could not be read -- the way wal push does it, so a write-once (Object Lock) target
        # gets the create-only amendment, never a rewrite of cluster.json.
        ensure_cluster(dst, cluster, system_identifier=there.system_identifier, server_major=there.server_major,
                       wal_segment_size=info.wal_segment_size)


class _Copier:
    def __init__(self, src: Storage, dst: Storage, cluster: str, stats: SyncStats, progress: _Progress,
                 pool: cf.ThreadPoolExecutor) -> None:
        self.src, self.dst, self.cluster, self.stats, self.progress, self.pool = src, dst, cluster, stats, progress, pool
        self.cancel = threading.Event()
        self.deferred: list[PgvaultError] = []  # failures that do not stop the rest of the run

    # --- WAL -------------------------------------------------------------------------------------

    def _wal_listing(self, storage: Storage) -> dict[str, WalFiles]:
        found: dict[str, tuple[bool, set[str]]] = {}
        for info in storage.list(layout.wal_root(self.cluster)):
            base = info.key.rsplit("/", 1)[-1]
            if base.endswith(".json"):
                name = base[: -len(".json")]
                if wal.classify_or_none(name) is not None:
                    found[name] = (True, found.get(name, (False, set()))[1])
                continue
            name_ = stored_name(base)
            if name_ and wal.classify_or_none(name_) is not None:
                found.setdefault(name_, (False, set()))[1].add(info.key)
        return {n: WalFiles(record=r, objects=frozenset(o)) for n, (r, o) in found.items()}

    def wal(self, info: ClusterInfo) -> None:
        # The source's backups were listed before (source_backups()): each had its WAL archived
        # before its manifest was written, so that WAL is in this listing.
        plan = plan_wal(self._wal_listing(self.src), self._wal_listing(self.dst))
        self.stats.add(wal_already=plan.done, wal_unfinished_on_source=len(plan.unfinished_on_source))
        self.progress.total_wal = len(plan.copies)
        self._run([functools.partial(self._copy_wal, c.name, c.copy_record, c.target_objects) for c in plan.copies],
                  what="WAL")

    def _copy_wal(self, name: str, copy_record: bool, target_objects: frozenset[str]) -> None:
        meta = layout.wal_meta(self.cluster, name)
        try:
            raw = self.src.read_bytes(meta)
        except ObjectNotFound:
            self.stats.add(expired_on_source=1)  # expired on the source since the listing
            return
        rec = WalRecord.loads(raw, where=f"{meta} in {self.src.url}")
        try:
            # Before the record goes to the target: an object an expire on the source has just
            # deleted (it deletes the object first) would leave the target a record without object.
            self.src.stat(rec.key)
        except ObjectNotFound:
            self._wal_gone(name, meta)
            return
        if copy_record:
            try:
                self.dst.put_if_absent(meta, raw)
                copy_record = False
            except ObjectExists:
                pass
        if not copy_record:  # the target had one (a run cut short, or another writer): it must agree
            theirs = WalRecord.loads(self.dst.read_bytes(meta), where=f"{meta} in {self.dst.url}")
            if (theirs.key, theirs.checksums) != (rec.key, rec.checksums):
                raise IntegrityError(f"{meta} in {self.dst.url} describes other bytes than the source's record "
                                     f"(stored sha256 {theirs.checksums.stored_sha256[:12]}… vs "
                                     f"{rec.checksums.stored_sha256[:12]}…); nothing was overwritten")
        there = ObjectState(self.dst.stat(rec.key).size if rec.key in target_objects else None)
        try:
            self._object(rec.key, rec.checksums.stored_size, rec.checksums.stored_sha256, there, counted=False)
        except _MissingOnSource:  # deleted in the moment since the check above
            self._wal_gone(name, meta)
            return
        self.stats.add(wal_copied=1)

    def _wal_gone(self, name: str, meta: str) -> None:
        """The object of a listed WAL file is no longer on the source: deleted by an expire (which
        removes the record next), or the record is all that is left of a push (a hole the source's
        own status and verify report).  Neither is this copy's integrity problem: the file is left
        for the next run, like a push under way, never copied as complete."""
        if _exists(self.src, meta):
            log.get().warning("repo sync: WAL %s has a record but no object in %s: left for the next run", name,
                              self.src.url)
            self.stats.add(wal_unfinished_on_source=1)
        else:
            self.stats.add(expired_on_source=1)

    def restore_points(self) -> None:
        prefix = restore_point_key(self.cluster, "x").rsplit("/", 1)[0] + "/"
        for info in self.src.list(prefix):
            raw = self.src.read_bytes(info.key)
            try:
                self.dst.put_if_absent(info.key, raw)
                self.stats.add(restore_points_copied=1)
            except ObjectExists:
                # A restore point of the same name on the target must be the same one: another
                # LSN under the name would send --target-name restores from the copy elsewhere.
                if self.dst.read_bytes(info.key) != raw:
                    e = IntegrityError(f"{info.key} in {self.dst.url} differs from the source's restore point; "
                                       "nothing was overwritten", hint=_CONFLICT_HINT)
                    log.get().error("repo sync: %s", e.message)
                    self.deferred.append(e)  # raised after the backups: they still reach the copy

    # --- backups -----------------------------------------------------------------------------------

    def _finished(self, storage: Storage, root: str) -> tuple[set[str], dict[str, int]]:
        prefixes: set[str] = set()
        sizes: dict[str, int] = {}
        for info in storage.list(root):
            sizes[info.key] = info.size
            parts = info.key.split("/")
            if parts[-1] == layout.MANIFEST_NAME and len(parts) >= 2 and layout.is_backup_id(parts[-2]):
                prefixes.add(info.key[: -len(layout.MANIFEST_NAME)])
        return prefixes, sizes

    _ROOTS = ((layout.base_root, PhysicalManifest.loads), (layout.logical_root, LogicalManifest.loads))

    def source_backups(self) -> dict[str, set[str]]:
        """The source's finished backups (their prefixes) per root, listed before the WAL."""
        return {root(self.cluster): self._finished(self.src, root(self.cluster))[0] for root, _ in self._ROOTS}

    def backups(self, finished: dict[str, set[str]]) -> None:
        """Copy the backups of ``finished`` (:meth:`source_backups`) the target lacks."""
        failures: list[PgvaultError] = self.deferred
        for root_of, loads in self._ROOTS:
            root = root_of(self.cluster)
            source = finished[root]
            target, sizes = self._finished(self.dst, root)
            plan = plan_backups(source, target)
            self.stats.add(backups_already=plan.done)
            for prefix in plan.copies:
                try:
                    self._copy_backup(prefix, loads, sizes)
                except PgvaultError as e:  # one bad backup does not keep the others from the copy
                    log.get().error("repo sync: backup %s not copied: %s", prefix, e.message)
                    failures.append(e)
        if failures:
            raise _summary(failures, "backup(s) or restore point(s)")

    def _copy_backup(self, prefix: str, loads: Callable[..., Any], sizes: dict[str, int]) -> None:
        key = prefix + layout.MANIFEST_NAME
        try:
            raw = self.src.read_bytes(key)
        except ObjectNotFound:
            return  # expired on the source since the listing
        try:
            manifest = loads(raw, where=f"{key} in {self.src.url}")
        except (IntegrityError, KeyError, TypeError, ValueError) as e:
            raise IntegrityError(f"{key} in {self.src.url} cannot be read ({e}); the backup is not copied") from None
        objects = manifest.stored_objects()  # the file list of a base backup too
        self.progress.total_objects += len(objects)
        try:
            self._run([functools.partial(self._object, prefix + o.key, o.result.stored_size, o.result.stored_sha256,
                                         ObjectState(sizes.get(prefix + o.key))) for o in objects],
                      what=f"backup {prefix}")
        except PgvaultError:
            # expire deletes a backup's manifest first, then its objects: without its manifest now,
            # the backup was expired on the source during the copy -- not copied, and no error
            # (what was copied of it is debris the target's expire sweeps).
            if _exists(self.src, key):
                raise
            log.get().info("repo sync: backup %s was expired on the source during the copy: not copied", prefix)
            self.stats.add(expired_on_source=1)
            return
        try:  # last: from now on the backup exists on the target
            self.dst.put_if_absent(key, raw)
        except ObjectExists:
            if self.dst.read_bytes(key) != raw:
                raise IntegrityError(f"{key} in {self.dst.url} differs from the source's manifest; nothing was "
                                     "overwritten") from None
        self.stats.add(backups_copied=1)

    # --- objects -----------------------------------------------------------------------------------

    def _run(self, tasks: list[Callable[[], None]], *, what: str) -> None:
        """Run ``tasks`` on the pool; every one is run, then the failures are raised together."""
        futures = [self.pool.submit(t) for t in tasks]
        failures: list[PgvaultError] = []
        try:
            for f in cf.as_completed(futures):
                try:
                    f.result()
                except PgvaultError as e:
                    log.get().error("repo sync: %s", e.message)
                    failures.append(e)
                self.progress.tick()
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        if failures:
            raise _summary(failures, f"object(s) of {what}")

    def _object(self, key: str, size: int, sha256: str, there: ObjectState, *, counted: bool = True) -> None:
        """Copy (or verify) one object; ``counted``: it is a backup's, counted in objects_copied
        (a WAL file's object is counted as the WAL file)."""
        action = object_action(size, there)
        if action == "conflict":
            raise IntegrityError(f"{key} in {self.dst.url} holds {there.size} bytes where the source's checksums "
                                 f"say {size}; nothing was overwritten", hint=_CONFLICT_HINT)
        if action == "verify":
            self._verify_existing(key, size, sha256)
            return
        digest = hashlib.sha256()
        n = 0
        try:
            with self.src.open_read(key) as r, self.dst.open_write(key, if_absent=True) as w:
                while chunk := r.read(CHUNK):
                    self._check_cancel()
                    digest.update(chunk)
                    n += len(chunk)
                    w.write(chunk)
                    self.stats.add(bytes_copied=len(chunk))
                if (n, digest.hexdigest()) != (size, sha256):
                    # Raised inside the writer's block: it aborts, nothing becomes visible.
                    raise IntegrityError(f"{key} in {self.src.url} does not match its checksums ({n} bytes, sha256 "
                                         f"{digest.hexdigest()[:12]}…; expected {size}, {sha256[:12]}…): not copied",
                                         hint="run 'pgvault verify --all' on the source")
        except ObjectNotFound:
            raise _MissingOnSource(f"{key} is listed in its record or manifest but missing in {self.src.url}") from None
        except ObjectExists:  # appeared meanwhile (another writer): it must be the same object
            self._verify_existing(key, size, sha256)
            return
        if counted:
            self.stats.add(objects_copied=1)

    def _check_cancel(self) -> None:
        if self.cancel.is_set():
            raise _Cancelled  # inside the writer's block: the write aborts, nothing becomes visible

    def _verify_existing(self, key: str, size: int, sha256: str) -> None:
        digest = hashlib.sha256()
        n = 0
        with self.dst.open_read(key) as r:
            while chunk := r.read(CHUNK):
                self._check_cancel()
                digest.update(chunk)
                n += len(chunk)
        if (n, digest.hexdigest()) != (size, sha256):
            raise IntegrityError(f"{key} in {self.dst.url} differs from the source's object (sha256 "
                                 f"{digest.hexdigest()[:12]}… vs {sha256[:12]}…); nothing was overwritten",
                                 hint=_CONFLICT_HINT)
        self.stats.add(objects_verified=1)


def _exists(storage: Storage, key: str) -> bool:
    try:
        storage.stat(key)
        return True
    except ObjectNotFound:
        return False


class _Cancelled(Exception):
    """The run is being interrupted: a copying thread stops (never reported, the main thread's
    interruption is)."""


class _MissingOnSource(IntegrityError):
    """An object its record or manifest names is not on the source (perhaps expired meanwhile)."""


_CONFLICT_HINT = ("the target holds another object under a key the copy writes: find out who wrote it (a different "
                  "cluster under the same name? tampering?) and move it away before syncing again")


def _summary(failures: list[PgvaultError], what: str) -> PgvaultError:
    first = failures[0]
    if len(failures) == 1:
        return first
    kind = IntegrityError if all(isinstance(f, IntegrityError) for f in failures) else PgvaultError
    return kind(f"{len(failures)} {what} failed; the first: {first.message}", hint=first.hint)

