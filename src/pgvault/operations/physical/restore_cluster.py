"""``pgvault restore-cluster``: lay out a base backup for point-in-time recovery, optionally start it.

Template: plan (:mod:`pgvault.policy.pitr`) → check the destinations are empty → stream each
tar (base, then tablespaces) out of the repository straight into place → point the tablespaces
at their new homes (``tablespace_map``) → write the recovery settings → optionally start the
server and follow its log until recovery reaches the target.

PostgreSQL 12+ reads recovery settings from the ordinary configuration, and ``recovery.signal``
is only a flag (its content is ignored): we write ``restore_command``, the ``recovery_target*``
settings and ``archive_mode = off`` into ``postgresql.auto.conf``, replacing any earlier lines for
the same names, and create an empty ``recovery.signal``.  ``archive_mode = off`` keeps a restored
copy from archiving into the production repository unless the operator asks (``--archive``).
With ``--standby`` (:mod:`pgvault.operations.physical.standby`) the copy becomes a replica instead:
``standby.signal``, ``primary_conninfo``, no recovery target, and ``--start`` waits until it streams.

Nothing that existed before is deleted unless ``--force`` says so; what this run created is
removed again if it fails before the server starts.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pgvault import log
from pgvault.config.restore_env import fetch_environment
from pgvault.errors import (
    IntegrityError,
    NotFoundError,
    TargetBusyError,
    TargetExistsError,
    UsageError,
)
from pgvault.fs import TreeSync, write_atomic
from pgvault.operations.context import Context
from pgvault.operations.physical import recovery, standby
from pgvault.operations.physical.delta import check_target, refuse_without_file_list
from pgvault.operations.physical.delta import prepare as prepare_delta
from pgvault.operations.physical.incremental import read_file_list
from pgvault.operations.physical.recovery import RecoveryOutcome, stop_server
from pgvault.operations.physical.unpack import (
    Job,
    extract_all,
    install_control_file,
    remove_unlisted,
    strip_incremental_label,
)
from pgvault.operations.workers import layout_lock
from pgvault.pg import wal
from pgvault.pg.runner import Runner
from pgvault.policy.chain import ChainBroken, broken, chain_of
from pgvault.policy.pitr import Plan, RecoveryTarget, plan_recovery, reachable_end
from pgvault.repository import layout
from pgvault.repository.archive_scan import load_archive_index
from pgvault.repository.catalog import load_physical, scan_physical
from pgvault.repository.cluster import read_cluster_info
from pgvault.repository.physical import PhysicalManifest
from pgvault.repository.wal_record import archived_at_iso
from pgvault.storage import ObjectNotFound

AUTO_CONF = "postgresql.auto.conf"
_BLOCK_MARK = "# pgvault restore-cluster"
_COPY_BUF = 1 << 20


@dataclass(frozen=True)
class RestoreOptions:
    data_dir: Path
    target: RecoveryTarget
    backup_id: str | None = None
    tablespace_map: Mapping[str, str] = field(default_factory=dict)  # name or oid -> new location
    force: bool = False
    delta: bool = False  # restore over an existing stopped data directory, writing only what differs
    archive: bool = False
    options: Mapping[str, str] = field(default_factory=dict)  # extra postgresql.auto.conf settings
    pgvault_command: str | None = None
    standby: standby.StandbyOptions | None = None  # --standby: a replica, no recovery target


@dataclass(frozen=True)
class RestoreClusterResult:
    plan: Plan
    data_dir: Path
    tablespaces: dict[str, str]
    settings: dict[str, str]
    restore_seconds: float
    outcome: RecoveryOutcome | None = None
    standby: dict[str, Any] | None = None  # standby.describe(): the primary (no password), the slot

    def to_json(self) -> dict[str, Any]:
        return {
            "plan": self.plan.to_json(),
            "data_dir": str(self.data_dir),
            "tablespaces": self.tablespaces,
            "settings": self.settings,
            "restore_seconds": round(self.restore_seconds, 3),
            "recovery": self.outcome.to_json() if self.outcome else None,
            "standby": self.standby,
        }


def make_plan(ctx: Context, target: RecoveryTarget, backup_id: str | None = None) -> Plan:
    """Read the repository and choose the base backup for ``target``."""
    info = read_cluster_info(ctx.storage, ctx.cluster)
    if info is None:
        raise NotFoundError(f"cluster {ctx.cluster!r} has nothing in {ctx.storage.url}")
    if backup_id is not None:  # named: its damaged manifest is exit 6, not "no such backup" (skipped below)
        load_physical(ctx.storage, ctx.cluster, backup_id)
    backups, damaged = scan_physical(ctx.storage, ctx.cluster)
    for d in damaged:
        log.get().warning("%s backup %s is damaged: %s", d.kind, d.backup_id, d.reason)
    # An incremental whose chain cannot be followed is never chosen by itself (asked for by its id,
    # plan_chain refuses it with the reason); an older backup whose chain is whole is.
    unusable = broken({b.backup_id: b for b in backups}, {d.backup_id: d.reason for d in damaged})
    skipped = tuple(f"base backup {i} is not used: its chain is broken ({why})" for i, why in sorted(unusable.items())
                    if i != backup_id)
    backups = [b for b in backups if b.backup_id not in unusable or b.backup_id == backup_id]
    if not backups:
        raise NotFoundError(f"no base backup of cluster {ctx.cluster!r} in {ctx.storage.url}",
                            hint="run 'pgvault basebackup' first")
    seg_size = info.wal_segment_size or backups[-1].wal_segment_size
    strict = load_archive_index(ctx.storage, ctx.cluster, seg_size, identities=ctx.identities)
    # Uploads still under way count as archived (wal fetch waits for them), but recovery to the end
    # of the archive is only required to get as far as what is stored now.
    index = strict.counting_in_flight(dt.datetime.now(dt.UTC))
    plan = plan_recovery(backups, index, target, backup_id=backup_id, archived_at=lambda n: archived_at(ctx, n))
    if skipped:
        plan = dataclasses.replace(plan, warnings=skipped + plan.warnings)
    first = wal.parse_segment_name(plan.first_wal, seg_size)[1]
    end = reachable_end(strict, plan.timeline, strict.history(plan.timeline), first)
    if end is None:
        return plan
    owner = wal.segment_owner(strict.history(plan.timeline), plan.timeline, seg_size)
    return dataclasses.replace(plan, must_reach=wal.segment_name(owner(end), end, seg_size))


def archived_at(ctx: Context, name: str) -> str | None:
    """When ``name`` was archived (its checksum record), or None."""
    return archived_at_iso(ctx.storage, ctx.cluster, name)


# --- laying out the data directory ----------------------------------------------------------------


def _is_empty(path: Path) -> bool:
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


def _prepare(path: Path, what: str, force: bool, created: list[Path]) -> None:
    """``path`` must be absent or empty; with ``force`` its contents are removed first."""
    if path.exists() and not path.is_dir():
        raise TargetExistsError(f"{what} {path} exists and is not a directory")
    if not _is_empty(path):
        if recovery.server_running(path):
            raise TargetBusyError(f"a PostgreSQL server is running in {path}; stop it first")
        if not force:
            hint = ("choose an empty directory, or pass --force to delete its contents first" if what == "data directory"
                    else "move it with --tablespace NAME=PATH (an empty or new directory), or empty it yourself")
            raise TargetExistsError(f"{what} {path} is not empty", hint=hint)
        log.get().warning("--force: removing the contents of %s", path)
        for child in path.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    if not path.exists():
        path.mkdir(parents=True, mode=0o700)
        created.append(path)
    path.chmod(0o700)


def plan_chain(ctx: Context, backup: PhysicalManifest) -> list[PhysicalManifest]:
    """The backups a restore of ``backup`` applies, full first, each with every object in the
    repository; :class:`IntegrityError` naming the broken link otherwise (before anything is written)."""
    if not backup.is_incremental:
        return [backup]
    manifests, damaged = scan_physical(ctx.storage, ctx.cluster)
    by_id = {m.backup_id: m for m in manifests}
    try:
        ids = chain_of(backup.backup_id, by_id, {d.backup_id: d.reason for d in damaged})
    except ChainBroken as e:
        raise IntegrityError(str(e), hint="restore an older full backup, or one whose chain is whole "
                                          "('pgvault verify' checks every chain)") from None
    chain = [by_id[i] for i in ids]
    for link in chain:
        for obj in link.stored_objects():
            key = layout.base_prefix(link.cluster, link.backup_id) + obj.key
            try:
                ctx.storage.stat(key)
            except ObjectNotFound:
                raise IntegrityError(f"base backup {backup.backup_id} cannot be restored: it needs base backup "
                                     f"{link.backup_id}, whose object {obj.key} is missing",
                                     hint="restore an older full backup, or one whose chain is whole") from None
    return chain


def _apply_chain(ctx: Context, chain: list[PhysicalManifest], data_dir: Path, homes: dict[str, Path],
                 kept: frozenset[str] = frozenset(), *, delta: bool = False) -> int:
    """Unpack the full backup, then each incremental of the chain over it, leaving the files in
    ``kept`` alone (``--delta``); the number of objects."""
    logger = log.get()
    count = 0
    for link in chain:
        jobs = [Job(link, o, data_dir, True, "", kept) for o in (link.base, *link.base_parts)]
        # A tablespace dropped since an earlier link is not restored (the last link decides).
        jobs += [Job(link, t.object, homes[t.oid], False, f"pg_tblspc/{t.oid}/", kept)
                 for t in link.tablespaces if t.oid in homes]
        for job, n in zip(jobs, extract_all(ctx, jobs)):
            logger.info("%s%s: %d files in %s", job.obj.name, f" of {link.backup_type} {link.backup_id}"
                        if len(chain) > 1 else "", n, job.into)
        count += len(jobs)
    install_control_file(data_dir)
    if len(chain) > 1 or delta:
        final = chain[-1]
        removed = remove_unlisted(data_dir, homes, set(read_file_list(ctx, final)))
        if len(chain) > 1:
            strip_incremental_label(data_dir)
        logger.info("chain of %d backups applied (%s); %d file(s) the last one does not hold removed",
                    len(chain), " + ".join(f"{b.backup_type} {b.backup_id}" for b in chain), removed)
    return count


def _tablespace_homes(backup: PhysicalManifest, mapping: Mapping[str, str]) -> dict[str, Path]:
    known = {t.name for t in backup.tablespaces} | {t.oid for t in backup.tablespaces}
    unknown = sorted(set(mapping) - known)
    if unknown:
        raise UsageError(f"--tablespace names unknown tablespace(s) {', '.join(unknown)}; backup {backup.backup_id} "
                         f"has {', '.join(t.name for t in backup.tablespaces) or 'none'}")
    homes = {}
    for t in backup.tablespaces:
        home = Path(mapping.get(t.name) or mapping.get(t.oid) or t.location)
        if not home.is_absolute():
            raise UsageError(f"tablespace {t.name}: {home} must be an absolute path")
        homes[t.oid] = home
    return homes


def restore_command(settings_env: Mapping[str, str], pgvault_command: str | None) -> str:
    """``restore_command`` carrying the non-secret settings as environment assignments."""
    command = pgvault_command or _default_command()
    assigns = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(settings_env.items()))
    return f"{assigns} {command} wal fetch %f %p"


def _default_command() -> str:
    found = shutil.which("pgvault")
    if found:
        return shlex.quote(found)
    return f"{shlex.quote(sys.executable)} -m pgvault"


def _conf_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


_ASSIGN_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*=?")


def write_recovery_settings(data_dir: Path, settings: Mapping[str, str], note: str, *, standby: bool = False,
                            drop: tuple[str, ...] = ()) -> Path:
    """Replace earlier lines for these names (and remove those for ``drop``) in postgresql.auto.conf,
    append ours, create recovery.signal (``standby``: standby.signal) and remove the other signal
    file (both present means standby mode); returns the signal file.  The file stays 0600 (as
    PostgreSQL's own): with --standby it may hold the primary's password."""
    conf = data_dir / AUTO_CONF
    lines = conf.read_text(encoding="utf-8").splitlines() if conf.exists() else []
    names = {k.lower() for k in (*settings, *drop)}
    kept = [ln for ln in lines if not ((m := _ASSIGN_RE.match(ln)) and m.group(1).lower() in names)]
    kept.append(f"{_BLOCK_MARK}: {note}")
    kept += [f"{k} = {_conf_quote(v)}" for k, v in settings.items()]
    write_atomic(conf, ("\n".join(kept) + "\n").encode("utf-8"), mode=0o600)
    signal, other = ("standby.signal", "recovery.signal") if standby else ("recovery.signal", "standby.signal")
    (data_dir / signal).write_bytes(b"")
    (data_dir / other).unlink(missing_ok=True)
    return data_dir / signal


def _chown_like(paths: list[Path], reference: Path, *, trees: bool = False) -> None:
    """As root, hand what we wrote to the data directory's owner (PostgreSQL checks ownership);
    with ``trees``, everything below ``paths`` too."""
    if os.geteuid() != 0 or not reference.exists():
        return
    st = reference.stat()
    for p in paths:
        os.chown(p, st.st_uid, st.st_gid, follow_symlinks=False)
        if trees and p.is_dir() and not p.is_symlink():
            for dirpath, dirnames, filenames in os.walk(p):
                for n in dirnames + filenames:
                    child = os.path.join(dirpath, n)
                    if os.lstat(child).st_uid != st.st_uid:
                        os.chown(child, st.st_uid, st.st_gid, follow_symlinks=False)


def restore_cluster(ctx: Context, opts: RestoreOptions, plan: Plan | None = None) -> RestoreClusterResult:
    """Lay out the chosen base backup in ``opts.data_dir`` with recovery settings (not started)."""
    with layout_lock(opts.data_dir.resolve()):  # never while an earlier run's workers still write there
        return _layout(ctx, opts, plan)


def _layout(ctx: Context, opts: RestoreOptions, plan: Plan | None) -> RestoreClusterResult:
    logger = log.get()
    plan = plan or make_plan(ctx, opts.target, opts.backup_id)
    b = plan.backup
    for w in plan.warnings:
        logger.warning("%s", w)
    logger.info("restoring base backup %s (ended %s at %s, timeline %d) to reach %s on timeline %d",
                b.backup_id, b.stop_time, b.stop_lsn, b.timeline, opts.target.describe(), plan.timeline)
    data_dir = opts.data_dir.resolve()
    homes = _tablespace_homes(b, opts.tablespace_map)
    if any(h == data_dir or data_dir in h.parents or h in data_dir.parents for h in homes.values()):
        raise UsageError("a tablespace location must not be inside the data directory, nor contain it")
    created: list[Path] = []
    syncs: list[TreeSync] = []
    t0 = time.monotonic()
    chain = plan_chain(ctx, b)
    kept: frozenset[str] = frozenset()
    if opts.delta:
        if opts.force:
            raise UsageError("--delta and --force exclude each other (--force empties the directory first)")
        if b.files is None:
            raise refuse_without_file_list(b.backup_id)
        check_target(data_dir, homes)
        final_files = read_file_list(ctx, b)
    else:
        _prepare(data_dir, "data directory", opts.force, created)
    try:
        for home in homes.values():
            # Never emptied, even with --force: on the production host the recorded location is the
            # live cluster's tablespace, and nothing in it says so (no postmaster.pid).  --delta
            # touches one only when the stopped data directory links to it (delta.check_target).
            if opts.delta and home.exists():
                continue
            _prepare(home, "tablespace location", False, created)
        if opts.delta:
            kept = prepare_delta(data_dir, homes, final_files, workers=ctx.settings.backup_parallel).kept
        # Opened before anything is unpacked, so that the sync at the end reports any write-back
        # error since (fs.TreeSync): the files are fsynced as they are written, the directories
        # are not, and os.sync() reported nothing (and flushed every file system of the host).
        syncs = [TreeSync(p) for p in (data_dir, *homes.values())]
        t_unpack = time.monotonic()
        jobs = _apply_chain(ctx, chain, data_dir, homes, kept, delta=opts.delta)
        owner_ref = data_dir / "PG_VERSION"
        if not owner_ref.exists():
            raise IntegrityError(f"base backup {b.backup_id} has no PG_VERSION: not a data directory")
        (data_dir / "pg_wal" / "archive_status").mkdir(parents=True, exist_ok=True)
        (data_dir / "pg_tblspc").mkdir(exist_ok=True)
        written: list[Path] = [data_dir, data_dir / "pg_wal", data_dir / "pg_wal" / "archive_status",
                               data_dir / "pg_tblspc", *homes.values()]
        if homes:
            # PostgreSQL re-creates pg_tblspc/<oid> from tablespace_map when recovery starts;
            # we make the links too so the directory is right even before that.
            (data_dir / "tablespace_map").write_text("".join(f"{oid} {home}\n" for oid, home in homes.items()))
            for oid, home in homes.items():
                link = data_dir / "pg_tblspc" / oid
                link.unlink(missing_ok=True)
                link.symlink_to(home)
                written.append(link)
            written.append(data_dir / "tablespace_map")
        settings: dict[str, str] = {"restore_command": restore_command(fetch_environment(ctx.settings), opts.pgvault_command)}
        if not opts.archive:
            settings["archive_mode"] = "off"
        if opts.standby is not None:
            settings.update(standby.settings(opts.standby, ctx.environ))
        else:
            settings.update(opts.target.settings())
        settings.update(opts.options)
        note = f"backup {b.backup_id}, {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}"
        # Lines the backup brought along (a backup of a copy that was itself restored to a point
        # in time) must not steer this recovery: every recovery target not set here goes.
        signal = write_recovery_settings(data_dir, settings, note, standby=opts.standby is not None,
                                         drop=standby.INHERITED if opts.standby is not None else standby.TARGETS)
        written += [data_dir / AUTO_CONF, signal]
        _chown_like(written, owner_ref)
        _chown_like([data_dir, *homes.values()], owner_ref, trees=True)
        t_sync = time.monotonic()
        for tree in syncs:
            try:
                tree.sync()
            except OSError as e:
                raise IntegrityError(f"cannot flush the restored files in {tree.root} to disk: {e}") from None
        logger.info("laid out in %.1fs: unpacking %.1fs (%d objects, %d at a time), sync %.1fs",
                    time.monotonic() - t0, t_sync - t_unpack, jobs, min(ctx.settings.backup_parallel, jobs),
                    time.monotonic() - t_sync)
    except BaseException:
        for path in reversed(created):
            shutil.rmtree(path, ignore_errors=True)
        raise
    finally:
        for tree in syncs:
            tree.close()
    shown = {k: standby.redact(v) if k == "primary_conninfo" else v for k, v in settings.items()}
    return RestoreClusterResult(plan, data_dir, {oid: str(h) for oid, h in homes.items()}, shown, time.monotonic() - t0,
                                standby=standby.describe(opts.standby, ctx.environ) if opts.standby is not None else None)


# --- starting the restored server (operations/physical/recovery.py follows it and checks the stop point) ---


def start_and_follow(
    runner: Runner, result: RestoreClusterResult, *, major: int, bin_dirs: tuple[str, ...] = (), port: int | None = None,
    environ: Mapping[str, str] | None = None, timeout: float | None = None,
    progress: Callable[[RecoveryOutcome], None] | None = None, users: tuple[str, ...] = (),
) -> RecoveryOutcome:
    """Start the restored server, follow recovery, confirm it with the server and hold the stop
    point against the plan (see :mod:`pgvault.operations.physical.recovery`); a standby: until it
    is in recovery and consistent, and streams when it has a primary."""
    mode = None if result.standby is None else "stream" if result.standby["primary"] is not None else "archive"
    return recovery.start_and_follow(
        runner, result.data_dir, result.plan, major=major, bin_dirs=bin_dirs, port=port, environ=environ, timeout=timeout,
        progress=progress, expected_wal=result.plan.must_reach if mode is None else None, users=users, standby=mode)


def major_of(backup: PhysicalManifest) -> int:
    return backup.server_version_num // 10000


# --- the restore-cluster command -------------------------------------------------------------


def check_options(opts: RestoreOptions) -> None:
    """Usage errors of combinations, before anything is read or written (``--dry-run`` too)."""
    if opts.standby is not None:
        if opts.target != RecoveryTarget():
            raise UsageError("--standby takes no --target-* option: a standby follows its primary (timeline 'latest') "
                             "and has no recovery target")
        standby.check(opts.standby, opts.options)
    else:
        standby.check_option_conninfo(opts.options)


def restore_and_recover(
    ctx: Context, opts: RestoreOptions, *, start: bool = False, port: int | None = None, timeout: float | None = None,
    progress: Callable[[RecoveryOutcome], None] | None = None,
) -> RestoreClusterResult:
    """``pgvault restore-cluster``: plan (``opts.backup_id`` or the best base backup for the
    target), lay the backup out with its recovery settings, and with ``start`` start the server,
    follow recovery and hold where it stopped against the plan (a stop short of it fails).  The
    CLI parses and renders; this is its one entry point (``--dry-run`` calls :func:`make_plan`).
    With ``opts.standby`` the copy is a replica: no recovery target, it follows the primary."""
    check_options(opts)
    plan = make_plan(ctx, opts.target, opts.backup_id)
    result = restore_cluster(ctx, replace(opts, backup_id=plan.backup.backup_id), plan)
    if not start:
        return result
    # The server (and every restore_command it runs) never needs the primary's password in its environment.
    environ = {k: v for k, v in ctx.environ.items() if k != standby.PASSWORD_ENV}
    outcome = start_and_follow(ctx.runner, result, major=major_of(plan.backup), bin_dirs=ctx.settings.pg_bin_dirs,
                               port=port, environ=environ, timeout=timeout, progress=progress)
    return replace(result, outcome=outcome)


__all__ = ["RestoreOptions", "RestoreClusterResult", "RecoveryOutcome", "make_plan", "check_options", "restore_cluster",
           "restore_and_recover",
           "start_and_follow", "stop_server", "write_recovery_settings", "restore_command"]
