"""``wal push`` (archive_command) and ``wal fetch`` (restore_command) and their contracts.

PostgreSQL's rules (continuous-archiving docs, "Setting Up WAL Archiving" and "Recovering Using a
Continuous Archive Backup"):

* archive_command must return 0 only once the file is safely stored: an object store's completed
  upload or a local fsync + rename, never "queued".  It may be called again for a file it already
  archived (after a crash); if the stored copy is identical that must succeed, and a file that
  differs must never replace what is stored: the old copy may be the one a base backup needs.
* restore_command is asked for files that may legitimately not exist (the next timeline's history
  file, the segment after the end of the archive) and must then fail; but any *other* failure must
  not look like "not found", or recovery would take it as the end of the archive and promote,
  silently skipping committed transactions.  Only a confirmed absence exits 1; everything else exits
  with a status above 125, which makes PostgreSQL abort recovery instead (pghoard's reasoning).

Each archived file is an object (through the usual pipeline) plus a JSON sidecar with its raw and
stored checksums.  The archive host has no private key, so comparing content with the stored copy
is done on the raw sha256 in the sidecar; fetch verifies against it too.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pgvault import log
from pgvault.errors import ConfigError, IntegrityError, NotFoundError, StorageError, UsageError
from pgvault.fs import atomic_file, file_sha256
from pgvault.operations.context import Context
from pgvault.pg import wal
from pgvault.pg.control import read_major_version, read_segment_header, read_system_identifier
from pgvault.pipeline import PipelineSpec, StreamResult, all_suffixes
from pgvault.procs import hostname, pid_alive, random_id
from pgvault.repository import layout
from pgvault.repository.cluster import ClusterInfo, ensure_cluster, read_cluster_info
from pgvault.repository.wal_record import PushResult, WalRecord, load_record, read_record, save_record
from pgvault.storage import ObjectExists, ObjectNotFound


def _kind(name: str) -> wal.WalFileKind:
    try:
        return wal.classify(name)
    except wal.WalError as e:
        raise UsageError(f"not a WAL file name PostgreSQL archives: {e}") from None


def _data_dir(pgdata: str | None) -> Path:
    # PostgreSQL runs archive_command and restore_command with the data directory as cwd.
    return Path(pgdata) if pgdata else Path.cwd()


# A record whose object never appeared is an unfinished push. It is taken over when its process
# is gone (same host), or after this long: far beyond one commit (a single S3 request, bounded by
# the storage timeouts), so a push that is merely slow is not mistaken for a dead one.
PUSH_STALE_SECONDS = 900.0
# A push whose record-to-commit step took longer than this checks that its record is still its own.
_RECHECK_AFTER = 60.0
# Pushes running in this process (the background pusher runs many in threads): a record with our
# own pid is in flight only if its push_id is here, otherwise an earlier attempt of ours failed.
_in_flight: set[str] = set()
_in_flight_lock = threading.Lock()


def _lookup(ctx: Context, name: str) -> tuple[bool, WalRecord | None, bool]:
    """(whether ``name`` has a checksum record, the record if it reads, whether its object exists).

    An unreadable record describes nothing, so it is taken over like a dead push's."""
    try:
        meta = read_record(ctx.storage, ctx.cluster, name)
    except IntegrityError:
        return True, None, False
    if meta is None:
        return False, None, False
    try:
        ctx.storage.stat(meta.key)
    except ObjectNotFound:
        return True, meta, False
    return True, meta, True


def _abandoned(meta: WalRecord | None) -> str | None:
    """Why the push that wrote ``meta`` (a record without object) is over, or None if it may still run."""
    if meta is None:
        return "unreadable record"
    if meta.host == hostname() and meta.pid is not None:
        if meta.pid == os.getpid():
            with _in_flight_lock:
                if meta.push_id not in _in_flight:
                    return "an earlier attempt in this process failed"
        elif not pid_alive(meta.pid):
            return f"process {meta.pid} is gone"
    if (dt.datetime.now(dt.UTC) - meta.archived_at).total_seconds() > PUSH_STALE_SECONDS:
        return f"no object since {meta.archived_at.isoformat()}"
    return None


def _in_progress(name: str, meta: WalRecord | None) -> StorageError:
    host, pid, since = (meta.host, meta.pid, meta.archived_at.isoformat()) if meta else (None, None, None)
    return StorageError(
        f"another push of {name} is in progress (host {host}, pid {pid}, since {since}); not archived by this call",
        hint="PostgreSQL retries archive_command; this resolves once the other push finishes",
    )


def _same_or_refuse(ctx: Context, name: str, src: Path, meta: WalRecord) -> PushResult:
    """The name is archived (record and object): succeed for identical content, refuse different."""
    # Only a retry needs a separate read to compare content; the normal path hashes while it
    # uploads, so each segment is read once.
    raw_sha, raw_size = file_sha256(src)
    sums = meta.checksums
    if sums.raw_sha256 == raw_sha and sums.raw_size == raw_size:
        log.get().info("%s was already archived with identical content", name)
        return PushResult(name, meta.key, True, raw_size, sums.stored_size, raw_sha)
    raise IntegrityError(
        f"{name} is already archived in {ctx.storage.url} with different content "
        f"(sha256 {sums.raw_sha256[:16]}..., ours {raw_sha[:16]}...); refusing to overwrite it",
        hint="two servers may be archiving into the same cluster name, or this server was restored without "
        "a new timeline; investigate before removing anything",
    )


def _settle_after_race(ctx: Context, name: str, src: Path) -> PushResult:
    """Another push claimed the record first: the same rules as a retry."""
    _, meta, stored = _lookup(ctx, name)
    if stored:
        assert meta is not None
        return _same_or_refuse(ctx, name, src, meta)
    raise _in_progress(name, meta)


def _drop_own_record(ctx: Context, name: str, push_id: str) -> None:
    """After a failed commit, remove our record (best effort), so the next push need not wait
    for it to go stale; one left behind is harmless (a record without object means "absent")."""
    try:
        _, meta, _ = _lookup(ctx, name)
        if meta and meta.push_id == push_id:
            ctx.storage.delete(layout.wal_meta(ctx.cluster, name))
    except Exception as exc:  # noqa: BLE001 - the original error is the one to report
        log.get().debug("could not remove the record of a failed push: %s", exc)


def _object_was_there(ctx: Context, name: str, src: Path, push_id: str) -> PushResult:
    """We hold the record, but the object key was taken. Either a push we took for dead committed
    after all (it then puts its own record back: wait a moment for that), or the object has no
    record at all (a damaged archive). Never overwrite; never leave our record describing it."""
    time.sleep(1.0)
    _, meta, stored = _lookup(ctx, name)
    if stored and meta and meta.push_id != push_id:
        return _same_or_refuse(ctx, name, src, meta)
    if meta and meta.push_id == push_id:
        ctx.storage.delete(layout.wal_meta(ctx.cluster, name))  # ours: it describes bytes that were never stored
    raise IntegrityError(
        f"{name}: {ctx.storage.url} already holds an object for it that no checksum record describes; "
        "refusing to overwrite it",
        hint="the archive was modified by hand or two pushes raced; investigate before removing anything",
    )


# zstd's level for WAL when compression.level is unset.  Measured on table WAL (issue 12,
# docs/performance.md): level 1 stores 24.8% of the raw bytes, the default level 3 24.7%, for 43%
# of the CPU (28 vs 67 ms per 16 MiB segment); the archiver handles one segment at a time and the
# pusher shares the server's cores, so the default level would only buy CPU time nobody gets back.
WAL_ZSTD_LEVEL = 1


def wal_pipeline(spec: PipelineSpec) -> PipelineSpec:
    """The pipeline a WAL file is pushed through: the settings', with :data:`WAL_ZSTD_LEVEL` for an
    unset zstd level."""
    if spec.compression == "zstd" and spec.level is None:
        return dataclasses.replace(spec, level=WAL_ZSTD_LEVEL)
    return spec


def push(ctx: Context, path: str, *, pgdata: str | None = None, known: ClusterInfo | None = None) -> PushResult:
    """Archive one WAL file durably; idempotent for identical content, refuses different content.

    ``known``: the cluster descriptor, when the caller already read it (the background pusher: a
    descriptor with its segment size never changes, so one read serves every segment)."""
    src = Path(path)
    name = src.name
    kind = _kind(name)
    data_dir = _data_dir(pgdata)
    if not src.is_absolute():
        src = data_dir / src
    if kind in (wal.WalFileKind.SEGMENT, wal.WalFileKind.PARTIAL):
        header = read_segment_header(src)
        sysid, seg_size = header.system_identifier, header.segment_size
    else:
        sysid, seg_size = read_system_identifier(data_dir), None
    try:
        if known is None or known.wal_segment_size is None:
            known = read_cluster_info(ctx.storage, ctx.cluster)
    except StorageError:
        # A local repository root is created only by the write check (so an unmounted volume is
        # never mistaken for an empty archive); the first push of a new archive makes it.
        ctx.storage.check_writable()
        known = read_cluster_info(ctx.storage, ctx.cluster)
    if known is None or (seg_size and known.wal_segment_size is None):
        known = ensure_cluster(
            ctx.storage, ctx.cluster, system_identifier=sysid, server_major=read_major_version(data_dir),
            wal_segment_size=seg_size,
        )
    if known.system_identifier != sysid:
        raise ConfigError(
            [f"refusing to archive {name}: it belongs to system {sysid}, but cluster {ctx.cluster!r} in "
             f"{ctx.storage.url} is system {known.system_identifier}"],
            hint="each PostgreSQL cluster needs its own cluster name (PGVAULT_CLUSTER)",
        )
    spec = wal_pipeline(ctx.settings.pipeline())
    key = layout.wal_object(ctx.cluster, name, spec.suffix())
    takeover, meta, stored = _lookup(ctx, name)
    if stored:
        assert meta is not None
        return _same_or_refuse(ctx, name, src, meta)
    if takeover:
        reason = _abandoned(meta)
        if reason is None:
            raise _in_progress(name, meta)
        log.get().warning("taking over the record of an unfinished push of %s: %s", name, reason)
    push_id = random_id()
    with _in_flight_lock:
        _in_flight.add(push_id)
    try:
        return _upload(ctx, src, key, spec, push_id, takeover, lambda result: WalRecord(
            name=name, kind=kind, key=key, system_identifier=sysid, pipeline=spec, checksums=result,
            archived_at=dt.datetime.now(dt.UTC),
            # Who is pushing: lets a later push tell a crashed push from one still in flight.
            push_id=push_id, host=hostname(), pid=os.getpid(),
            # Tiny and not secret: planning a recovery (and 'list') reads it without the private key.
            history=src.read_text(encoding="utf-8", errors="replace") if kind is wal.WalFileKind.HISTORY else None,
        ))  # fmt: skip
    finally:
        with _in_flight_lock:
            _in_flight.discard(push_id)


def _upload(ctx: Context, src: Path, key: str, spec: PipelineSpec, push_id: str, takeover: bool,
            record: Callable[[StreamResult], WalRecord]) -> PushResult:
    """Stream the file into create-only object ``key``, claim (or take over) its ``record``, commit."""
    from pgvault.pipeline import write_stream  # the streams (zstandard, pyrage): not for a "not found"

    name = src.name
    claimed = False
    writer = ctx.storage.open_write(key, if_absent=True)
    try:
        with open(src, "rb") as f:
            rec = record(write_stream(f, writer, spec, threads=0))
        # The record goes in before the object is committed, so an object is never visible without
        # the record that lets push compare and fetch verify it. Claiming it with put_if_absent
        # makes this push the only one that may commit an object for the name.
        claimed_at = time.monotonic()
        try:
            save_record(ctx.storage, ctx.cluster, rec, replace=takeover)
        except ObjectExists:  # create-only: another push claimed it first
            writer.abort()
            return _settle_after_race(ctx, name, src)
        claimed = True
        writer.commit()  # create-only: never replaces an object, whoever wrote it
    except ObjectExists:
        return _object_was_there(ctx, name, src, push_id)
    except BaseException:
        writer.abort()
        if claimed:
            _drop_own_record(ctx, name, push_id)
        raise
    if time.monotonic() - claimed_at > _RECHECK_AFTER:
        # So slow that another push may have taken us for dead and replaced our record: the
        # object is ours, so the record must be too.
        _, again, _ = _lookup(ctx, name)
        if not again or again.push_id != push_id:
            save_record(ctx.storage, ctx.cluster, rec, replace=True)
    sums = rec.checksums
    return PushResult(name, rec.key, False, sums.raw_size, sums.stored_size, sums.raw_sha256)


def fetch(ctx: Context, name: str, destination: str, *, pgdata: str | None = None, foreground: bool = True) -> StreamResult:
    """Restore one archived WAL file to ``destination`` (atomically, fsynced).

    Raises :class:`ObjectNotFound` only when the repository confirms the file is absent *and*, for
    a segment, that nothing after it on its timeline is archived: PostgreSQL takes "not found" as
    the end of the archive and promotes, so a hole must stop recovery instead.  ``foreground=False``
    (the prefetcher) skips that look-ahead and never waits: its "not found" only means "not yet".
    """
    kind = _kind(name)
    data_dir = _data_dir(pgdata)
    known = read_cluster_info(ctx.storage, ctx.cluster)
    if known is None:
        # Not "file not found": an empty or mistyped repository must stop recovery, not end it.
        raise NotFoundError(f"cluster {ctx.cluster!r} has no archive in {ctx.storage.url}")
    if (data_dir / "global" / "pg_control").exists():
        sysid = read_system_identifier(data_dir)
        if known.system_identifier != sysid:
            raise ConfigError(
                [f"refusing to restore {name}: this data directory is system {sysid}, cluster {ctx.cluster!r} "
                 f"in {ctx.storage.url} is system {known.system_identifier}"]
            )
    segment = kind is wal.WalFileKind.SEGMENT
    meta_key = layout.wal_meta(ctx.cluster, name)
    try:
        ctx.storage.stat(meta_key)
    except ObjectNotFound:
        # The record is written before the object, so no record means no object, unless someone
        # deleted records by hand: look once, so that damage is not mistaken for the archive's end.
        folder = meta_key.rsplit("/", 1)[0] + "/"
        stored_names = {name + suffix for suffix in all_suffixes()}
        orphans = [i.key for i in ctx.storage.list(folder) if i.key.rsplit("/", 1)[-1] in stored_names]
        if orphans:
            raise IntegrityError(f"{name} is archived as {orphans[0]} but its checksum record is missing") from None
        if segment and foreground:
            _refuse_hole(ctx, name, f"{name} is not in the archive")
        raise  # confirmed absent: the one case restore_command may report as "not found"
    meta = load_record(ctx.storage, ctx.cluster, name)
    if not _object_arrives(ctx, meta, wait=foreground):
        what = f"{name} has a checksum record but its object {meta.key} is missing"
        if not (segment and foreground):
            raise IntegrityError(f"{what} (a push that did not finish, or a deleted object)",
                                 hint="run 'pgvault verify --all'")
        _refuse_hole(ctx, name, what)
        # Nothing after it: a push that died mid-upload (PostgreSQL never saw it succeed), e.g. on
        # a primary that was lost.  The archive ends before this segment, and the plan said so.
        raise ObjectNotFound(f"{what}; no later WAL is archived, so the archive ends before it")
    from pgvault.pipeline import read_stream  # the streams (zstandard, pyrage): only to decode

    spec = meta.pipeline
    identities = ctx.identities() if spec.encryption != "none" else []
    dest = Path(destination)
    if not dest.is_absolute():
        dest = data_dir / dest
    # PostgreSQL must never see part of a segment.  As root, the file takes its directory's owner
    # (the prefetch spool's, or pg_wal's): a prefetched segment is recorded after that chown.
    with atomic_file(dest, adopt=True) as out:
        try:
            src = ctx.storage.open_read(meta.key)
        except ObjectNotFound:
            raise IntegrityError(f"{name}: checksum record exists but object {meta.key} vanished") from None
        with src:
            result = read_stream(src, out, spec, identities=identities, expected=meta.checksums)
    return result


def _object_arrives(ctx: Context, meta: WalRecord, *, wait: bool) -> bool:
    """Whether the record's object is stored; a young record (an upload under way: the record goes
    in first) is given until :data:`IN_FLIGHT_GRACE` after it was written."""
    from pgvault.repository.archive_index import IN_FLIGHT_GRACE

    key = meta.key
    while True:
        try:
            ctx.storage.stat(key)
            return True
        except ObjectNotFound:
            pass
        if not wait:
            return False
        age = dt.datetime.now(dt.UTC) - meta.archived_at
        if age >= IN_FLIGHT_GRACE:
            return False
        log.get().info("%s: object not stored yet (record written %.0fs ago); waiting for the upload", key,
                       age.total_seconds())
        time.sleep(min(1.0, (IN_FLIGHT_GRACE - age).total_seconds()))


def _refuse_hole(ctx: Context, name: str, what: str) -> None:
    """Raise :class:`IntegrityError` when WAL after segment ``name`` on its timeline is archived.

    Looks in the segment's own folder and the next one (two small listings, also for a standby
    polling every few seconds), so a hole longer than the rest of a log id plus the next one
    (4 GiB of WAL with 16 MiB segments) is not seen here; restore-cluster's plan, which reads the
    whole archive, refuses those before recovery starts."""
    from pgvault.repository.archive_scan import stored_name  # fetch's rare path: not a cost of every push

    tli_log = name[:16]
    nxt = f"{name[:8]}{int(name[8:16], 16) + 1:08X}"
    later: str | None = None
    for folder in (tli_log, nxt):
        for info in ctx.storage.list(f"{layout.wal_root(ctx.cluster)}{folder}/"):
            base = info.key.rsplit("/", 1)[-1]
            stem = None if base.endswith(".json") else stored_name(base)  # objects: WAL that can be read
            if stem and wal.classify_or_none(stem) is wal.WalFileKind.SEGMENT and stem[:8] == name[:8] and stem > name:
                later = stem
                break
        if later:
            break
    if later:
        raise IntegrityError(
            f"{what}, but later WAL of its timeline is archived ({later}): the archive has a hole; recovery must "
            "not end here", hint="run 'pgvault verify --all'; to recover up to the hole, restore with a target "
            f"before {name} (--target-time / --target-lsn)")
