"""Physical base backups: PostgreSQL's non-exclusive low-level backup API plus our own tar stream.

Why not pg_basebackup: it can stream a tar to stdout only when the cluster has no tablespaces
besides pg_default (``-D -``); with tablespaces it writes one tar per tablespace into a local
directory, which would put the whole cluster unencrypted on local disk.  The low-level API
(``pg_backup_start`` / ``pg_backup_stop`` in one session) lets us read the data directory and each
tablespace and stream them as standard tar archives through the pipeline, one object each, like
pgBackRest does.  The price: pgvault must run on the database host (it reads PGDATA), and there is
no server-generated ``backup_manifest`` (that comes only with the replication protocol's
BASE_BACKUP); our manifest records every object's size and checksums instead.

Template: start → copy (base, then each tablespace) → stop → add backup_label / tablespace_map to
the base tar → check the needed WAL is in *our* archive → manifest (written last).

``global/pg_control`` is always the last file copied (after every part, before the stop): on a
standby the restore takes its minRecoveryPoint as the end of the backup (see standby_backup.py);
on a primary the order does not matter, so one order serves both.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pgvault
from pgvault import log
from pgvault.errors import ConfigError, DatabaseError, PgvaultError, UsageError
from pgvault.operations.context import Context
from pgvault.operations.physical import standby_backup
from pgvault.operations.physical.datadir_tar import Cancelled, split_parts, stream_tar, walk
from pgvault.operations.physical.incremental import database_rows, plan_delta, write_file_list
from pgvault.operations.physical.page_check import PageCheck, name_bad_pages, report_bad_pages
from pgvault.operations.physical.reading import Reading
from pgvault.pg import wal
from pgvault.pg.conn import connect, connection, server_facts
from pgvault.procs import hostname
from pgvault.repository import catalog, layout
from pgvault.repository.archive_scan import wait_until_archived
from pgvault.repository.cluster import ensure_cluster
from pgvault.repository.file_list import FileEntry
from pgvault.repository.locks import RepositoryLock
from pgvault.repository.manifest import StoredObject
from pgvault.repository.physical import (
    DatabaseRelations,
    PageChecksums,
    PhysicalManifest,
    RelationEntry,
    TablespaceEntry,
)

LOCK_OPERATION = "base-backup"

@dataclass(frozen=True)
class _Started:
    lsn: wal.LSN
    timeline: int


def basebackup(ctx: Context, *, pgdata: str | None = None, fast: bool = True, archive_timeout: float = 300.0,
               backup_type: str = "full") -> PhysicalManifest:
    """Take a base backup of the cluster whose data directory this host can read: ``full``, or
    ``incr`` / ``diff`` (only the pages changed since the reference; full when that is not safe)."""
    logger = log.get()
    conn = connect(ctx.conn, autocommit=True)
    try:
        facts = server_facts(conn)
        if facts.major < 15:
            raise UsageError("base backups need PostgreSQL 15 or newer (pg_backup_start)")
        settings = dict(conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN ('data_directory', 'archive_mode', 'wal_segment_size',"
            " 'data_checksums')"
        ).fetchall())
        row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        from_standby = bool(row and row[0])
        data_dir = Path(pgdata or settings.get("data_directory", ""))
        if not (data_dir / "PG_VERSION").exists():
            raise ConfigError([f"cannot read the data directory {data_dir}: pgvault basebackup runs on the database host"],
                              hint="pass --pgdata if the server reports a path this host sees differently")
        # A standby's own archive_mode says nothing (its primary archives, or it does with
        # "always"): the wait for the WAL in our repository below decides.
        if settings.get("archive_mode") == "off" and not from_standby:
            raise ConfigError(["archive_mode is off: a base backup without archived WAL cannot be restored"],
                              hint="set archive_mode = on and archive_command = 'pgvault wal push %p'")
        seg_size = int(settings["wal_segment_size"])
        spaces = [(str(r[0]), str(r[1]), str(r[2])) for r in conn.execute(
            "SELECT oid::text, spcname, pg_tablespace_location(oid) FROM pg_tablespace"
            " WHERE spcname NOT IN ('pg_default', 'pg_global') ORDER BY oid"
        ).fetchall()]
        spec = ctx.settings.pipeline()
        ctx.storage.check_writable()
        ensure_cluster(ctx.storage, ctx.cluster, system_identifier=facts.system_identifier, server_major=facts.major,
                       wal_segment_size=seg_size)
        with RepositoryLock(ctx.storage, ctx.cluster, LOCK_OPERATION):
            started_at = dt.datetime.now(dt.UTC)
            t0 = time.monotonic()
            backup_id = catalog.free_backup_id(ctx.storage, lambda i: layout.base_prefix(ctx.cluster, i), started_at)
            prefix = layout.base_prefix(ctx.cluster, backup_id)
            label = f"pgvault {backup_id}"
            row = conn.execute("SELECT pg_backup_start(%s, %s)::text", (label, fast)).fetchone()
            assert row is not None
            start = wal.LSN.parse(str(row[0]))
            logger.info("base backup %s started at %s (%s%s)", backup_id, start, data_dir,
                        ", on a standby" if from_standby else "")
            relation_maps = _relation_maps(ctx, conn, in_recovery=from_standby)
            check, not_checked = _page_check(ctx.settings.page_checksums, settings.get("data_checksums"), start)
            rows = database_rows(conn)
            plan = plan_delta(ctx, conn, backup_type, system_identifier=facts.system_identifier, major=facts.major,
                              seg_size=seg_size, start=start, data_checksums=settings.get("data_checksums") == "on",
                              rows=rows, archive_timeout=archive_timeout)
            logger.info("base backup %s: %s", backup_id, plan.reason)
            stopped: dict[str, str] = {}
            tablespaces = []
            # Set when the run is given up (a part failed, SIGTERM): the other parts' threads stop
            # and abort their objects before we return, instead of being cut off mid-write at exit.
            cancel = threading.Event()
            reading = Reading(check=check, delta=plan.delta, cancel=cancel)
            standby_backup.pause_for_tests("copy")
            watch = standby_backup.PromotionWatch(ctx.conn, cancel) if from_standby else None
            workers: list[threading.Thread] = []
            others: list[tuple[StoredObject, int] | BaseException | None] = []
            try:
                for oid, name, location in spaces:
                    obj, files = stream_tar(ctx, f"{prefix}tablespace-{oid}.tar{spec.suffix()}", f"tablespace {name}",
                                            Path(location), spec, base=False, cancel=cancel, reading=reading,
                                            name_prefix=f"pg_tblspc/{oid}/")
                    tablespaces.append(TablespaceEntry(oid=oid, name=name, location=location, object=obj, files=files))

                def stop() -> dict[str, bytes]:
                    # pg_backup_stop switches to a new segment. We do not let it wait for the archive
                    # (wait_for_archive waits forever if archive_command keeps failing); instead
                    # we wait, bounded, until the segments are in *our* repository.
                    # On a standby it switches nothing and returns its minRecoveryPoint (standby_backup.py).
                    r = conn.execute(
                        "SELECT lsn::text, labelfile, spcmapfile, clock_timestamp(),"
                        " pg_snapshot_xmax(pg_current_snapshot())::text, "
                        + ("(SELECT min_recovery_end_timeline FROM pg_control_recovery())" if from_standby else "0")
                        + " FROM pg_backup_stop(false)"
                    ).fetchone()
                    assert r is not None
                    stopped.update(lsn=str(r[0]), label=str(r[1]), spcmap=str(r[2] or ""),
                                   time=r[3].astimezone(dt.UTC).isoformat(), next_xid=str(r[4]))
                    stopped["label"] += plan.label_lines()
                    if from_standby:  # inside the base stream: a refusal aborts its object
                        standby_backup.check_stop(_label_timeline(stopped["label"]), int(r[5]), start,
                                           wal.LSN.parse(stopped["lsn"]))
                    files = {"backup_label": stopped["label"].encode()}
                    if stopped["spcmap"]:
                        files["tablespace_map"] = stopped["spcmap"].encode()
                    return files

                control = data_dir / standby_backup.CONTROL_FILE
                first, shared = split_parts(data_dir, (p for p in walk(data_dir, exclude_contents=True) if p != control))
                parts = ctx.settings.backup_parallel
                others += [None] * (parts - 1)
                # The parts are the parallelism.  Each hands its compression to one zstd worker
                # taking 1 MiB jobs: the part's thread reads, hashes and encrypts meanwhile, and
                # that cost ~20% less CPU here than compressing in the part's own thread.
                # zstd's default jobs (several window sizes each, in and out) made ~50 MiB per
                # part, two thirds of the peak; compression.threads workers per part only
                # multiplied that once every core runs a part.
                threads = ctx.settings.compression_threads if parts == 1 else min(1, ctx.settings.compression_threads)

                def other_part(i: int) -> None:
                    try:
                        others[i - 1] = stream_tar(ctx, f"{prefix}base-{i}.tar{spec.suffix()}", f"base part {i}",
                                                    data_dir, spec, base=True, paths=shared.paths(), cancel=cancel,
                                                    threads=threads, reading=reading)
                    except BaseException as e:  # noqa: BLE001 - re-raised below
                        others[i - 1] = e

                workers += [threading.Thread(target=other_part, args=(i,), name=f"base-part-{i}", daemon=True)
                            for i in range(1, parts)]
                for worker in workers:
                    worker.start()

                def stop_after_all_parts() -> dict[str, bytes]:
                    for worker in workers:  # every file is copied before the backup is stopped
                        worker.join()
                    if watch is not None and watch.stop():
                        raise standby_backup.promoted_error()
                    standby_backup.pause_for_tests("stop")
                    if cancel.is_set():  # a part failed: the caller stops the backup and reports why
                        raise Cancelled("base backup cancelled")
                    # Last file, after every part and before the stop (see the module docstring); in
                    # the file list like every other (a chain's restore removes what it lacks).
                    name, data = str(standby_backup.CONTROL_FILE), standby_backup.read_control_file(data_dir)
                    reading.entries.append(FileEntry(name, len(data), None, None, base_key.rsplit("/", 1)[-1]))
                    return {name: data} | stop()

                base_key = f"{prefix}base.tar{spec.suffix()}"
                base_obj, base_files = stream_tar(ctx, base_key, "base", data_dir, spec,
                                                   base=True, extra=stop_after_all_parts, paths=shared.paths(first), cancel=cancel,
                                                   threads=threads, reading=reading)
                for worker in workers:
                    worker.join()
                base_parts = []
                for r in others:
                    if isinstance(r, BaseException):
                        raise r
                    assert r is not None
                    base_parts.append(r[0])
                    base_files += r[1]
            except BaseException as e:
                cancel.set()
                promoted = watch is not None and watch.stop() or from_standby and standby_backup.is_promotion_error(e)
                for worker in workers:
                    worker.join(timeout=60)  # each aborts its object (S3: AbortMultipartUpload)
                if not stopped:
                    try:
                        conn.execute("SELECT pg_backup_stop(false)")
                    except Exception:  # noqa: BLE001 - the session may be gone; it aborts the backup itself
                        pass
                if promoted or isinstance(e, standby_backup.StandbyChanged):
                    # Whichever part noticed first: one clear verdict, and no object of the run is
                    # kept (the parts that had finished are deleted too).
                    _discard(ctx, prefix, [r[0] for r in others if isinstance(r, tuple)] + [t.object for t in tablespaces])
                    logger.error("backup %s discarded: %s", backup_id, e if not promoted else standby_backup.PROMOTED)
                    if promoted:
                        raise standby_backup.promoted_error() from None
                if isinstance(e, Cancelled):  # stopped because another part failed: report that failure
                    cause = next((r for r in others if isinstance(r, BaseException) and not isinstance(r, Cancelled)), None)
                    if cause is not None:
                        raise cause from None
                raise
            stop_lsn = wal.LSN.parse(stopped["lsn"])
            timeline = _label_timeline(stopped["label"])
            needed = list(wal.segments_between(timeline, start, stop_lsn, seg_size))
            hint = standby_backup.archive_wait_hint(needed[-1]) if from_standby else None
            if from_standby:
                logger.info("waiting until the primary archives %s (a standby cannot switch WAL)", needed[-1])
            wait_until_archived(ctx.storage, ctx.cluster, needed, archive_timeout, what="the base backup", hint=hint)
            page_checksums = not_checked if check is None else name_bad_pages(ctx, conn, check.report())
            files_obj = write_file_list(ctx, prefix, reading.entries)
            if plan.delta is not None:
                logger.info("%s against %s: %d changed page(s) stored, in %d of %d file(s)", plan.backup_type,
                            plan.delta.reference, reading.stored_blocks,
                            sum(1 for e in reading.entries if e.blocks), len(reading.entries))
            manifest = PhysicalManifest(
                backup_id=backup_id,
                cluster=ctx.cluster,
                system_identifier=facts.system_identifier,
                server_version=facts.version,
                server_version_num=facts.version_num,
                wal_segment_size=seg_size,
                timeline=timeline,
                start_lsn=str(start),
                stop_lsn=str(stop_lsn),
                first_wal=needed[0],
                last_wal=needed[-1],
                started_at=started_at.isoformat(),
                finished_at=dt.datetime.now(dt.UTC).isoformat(),
                duration_seconds=time.monotonic() - t0,
                backup_label=stopped["label"],
                tablespace_map=stopped["spcmap"],
                pipeline=spec,
                base=base_obj,
                base_files=base_files,
                base_parts=tuple(base_parts),
                tablespaces=tuple(tablespaces),
                host=hostname(),
                pgvault_version=pgvault.__version__,
                stopped_at=stopped["time"],
                next_xid=int(stopped["next_xid"]),
                relation_maps=relation_maps,
                page_checksums=page_checksums,
                backup_type=plan.backup_type,
                type_reason=plan.reason,
                reference=None if plan.reference is None else plan.reference.backup_id,
                reference_start_lsn="" if plan.reference is None else plan.reference.start_lsn,
                files=files_obj,
                data_checksums=settings.get("data_checksums") == "on",
                database_rows=rows,
                from_standby=from_standby,
            )
            with ctx.storage.open_write(prefix + layout.MANIFEST_NAME) as w:
                w.write(manifest.dumps())
            report_bad_pages(manifest, fail=ctx.settings.page_checksums == "fail")
            return manifest
    except DatabaseError:
        raise
    finally:
        conn.close()


# Tables (and materialized views) outside the system schemas, with their heap files now.
_RELATIONS_SQL = """
SELECT c.oid::int8, pg_relation_filenode(c.oid)::int8, n.nspname, c.relname, c.relkind::text, c.reltoastrelid::int8
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'
   AND pg_relation_filenode(c.oid) IS NOT NULL
 ORDER BY c.oid"""


def _relation_maps(ctx: Context, conn: Any, *, in_recovery: bool = False) -> tuple[DatabaseRelations, ...] | None:
    """Every database's tables and their heap files, read just after the backup started: the
    anchor ``wal find`` follows a table from through the WAL (its WAL names files, not tables).
    Best effort: a database that cannot be read is left out, and a failure never fails the backup.
    On a standby the position is the replayed one (no WAL is inserted in recovery)."""
    logger = log.get()
    try:
        dbs = conn.execute("SELECT oid::int8, datname FROM pg_database WHERE datallowconn AND NOT datistemplate"
                           " ORDER BY oid").fetchall()
    except Exception as e:  # noqa: BLE001 - the map is optional; the backup is not
        logger.warning("could not list the databases for the relation map (wal find): %s", e)
        return None
    maps = []
    for oid, name in dbs:
        try:
            with connection(ctx.conn, dbname=str(name)) as c:
                c.execute("SET statement_timeout = '60s'")
                row = c.execute("SELECT pg_last_wal_replay_lsn()::text" if in_recovery
                                else "SELECT pg_current_wal_insert_lsn()::text").fetchone()
                rows = c.execute(_RELATIONS_SQL).fetchall()
        except Exception as e:  # noqa: BLE001 - one unreadable database (pg_hba) leaves only itself out
            logger.warning("relation map of database %s not recorded (wal find cannot follow its tables "
                           "from this backup): %s", name, e)
            continue
        maps.append(DatabaseRelations(str(name), int(oid), str(row[0]) if row else "",
                                      tuple(RelationEntry(int(r[0]), int(r[1]), str(r[2]), str(r[3]), str(r[4]),
                                                          int(r[5])) for r in rows)))
    return tuple(maps)


def _page_check(policy: str, data_checksums: str | None, start: wal.LSN) -> tuple[PageCheck | None, PageChecksums]:
    """The checker of this backup's pages, or why there is none."""
    if policy == "off":
        return None, PageChecksums(checked=False, reason="backup.page_checksums is off")
    if data_checksums != "on":
        return None, PageChecksums(checked=False, reason="the cluster has no data checksums (initdb --data-checksums, "
                                                         "or pg_checksums --enable on the stopped cluster)")
    return PageCheck(start.value), PageChecksums(checked=True)


def _discard(ctx: Context, prefix: str, objects: list[StoredObject]) -> None:
    """Delete the objects a discarded run had finished (best effort: a write-once repository keeps
    them until expire's orphan sweep; without a manifest nothing lists or restores them)."""
    for obj in objects:
        try:
            ctx.storage.delete(prefix + obj.key)
        except Exception as e:  # noqa: BLE001 - the verdict is the error being raised, not this
            log.get().warning("could not delete %s of the discarded backup: %s", obj.key, e)


def _label_timeline(label: str) -> int:
    for line in label.splitlines():
        if line.startswith("START TIMELINE:"):
            return int(line.split(":", 1)[1])
    raise PgvaultError("backup_label from pg_backup_stop has no START TIMELINE line")
