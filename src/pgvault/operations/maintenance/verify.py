"""``pgvault verify``: re-read what the repository stores and prove it can be restored, without PostgreSQL.

Every stored object (logical dumps, base backup tars, archived WAL files) is first compared by
size with its record (the manifest, or a WAL file's checksum sidecar), then streamed through the
restore pipeline (:func:`pgvault.pipeline.read_stream` with the recorded :class:`StreamResult`)
into a sink that discards: the stored sha256 and size, age authentication, zstd/gzip integrity
and the raw sha256 and size are all checked, with memory bounded by one chunk.  Without an age
identity (the backup host normally holds only the public key) encrypted objects are checked by
their stored size and sha256 only; such items are reported as ``partial``, never as ``ok``.

An incremental base backup (``incr``/``diff``) is verified with every backup it is restored from,
each object once however many backups share it; a broken chain (a link missing, unreadable or
replaced) or a failed link is a failure of the incremental too
(:mod:`pgvault.operations.maintenance.verify_chain`).  A backup's file list is checked and parsed.

The WAL archive is checked the way recovery reads it (:mod:`pgvault.policy.pitr`): for each
base backup, every segment from its start to the newest archived segment along the timeline
recovery follows must be present (holes are reported as ranges of names), and each timeline
history file must agree with its ancestors and with the archived segments around its switch
point (the pure rules are in :mod:`pgvault.policy.wal_check`).  A checksum record whose
object is missing counts as a missing segment, because that is what ``wal fetch`` answers for it.

``--all`` also counts the unfinished writes under the cluster (a killed writer's ``.tmp-*`` files,
incomplete S3 multipart uploads: :mod:`pgvault.operations.maintenance.unfinished`), a warning when any is older
than ``retention.debris_grace``: they hold space that no listing shows.

Nothing here connects to PostgreSQL.  Problems become findings in the report; only repository
access failures (:class:`~pgvault.errors.StorageError`) and configuration errors abort the run.
"""

from __future__ import annotations

import datetime as dt
import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pgvault import log
from pgvault.errors import IntegrityError, NotFoundError
from pgvault.operations.context import Context
from pgvault.operations.maintenance.unfinished import UnfinishedSummary, scan
from pgvault.operations.maintenance.verify_chain import Chains, check_file_list
from pgvault.operations.progress import CountingReader
from pgvault.output import human_bytes
from pgvault.pg import wal
from pgvault.pipeline import PipelineSpec, StreamResult, all_suffixes, read_stream
from pgvault.policy.wal_check import (
    FAILED,
    OK,
    PARTIAL,
    WARNING,
    Finding,
    WalLine,
    collapse,
    continuity_finding,
    timeline_chain,
    timeline_findings,
    uncovered_gaps,
    unneeded_as_warnings,
    wal_continuity,
    without,
)
from pgvault.repository import catalog, layout
from pgvault.repository.archive_index import IN_FLIGHT_GRACE
from pgvault.repository.archive_scan import load_archive_index
from pgvault.repository.cluster import read_cluster_info
from pgvault.repository.manifest import LogicalManifest, StoredObject
from pgvault.repository.physical import PhysicalManifest
from pgvault.repository.wal_record import load_record
from pgvault.storage import ObjectInfo, ObjectNotFound, Storage

# A checksum record is written before its object is committed (see operations/archive/push_fetch.py), so a
# record without an object is normal while a push is uploading.  Younger than this: a warning
# ("in flight"); older: a hole, because wal fetch cannot serve it (one rule with status and planning).
PUSH_GRACE = IN_FLIGHT_GRACE
NO_IDENTITY = "stored size and sha256 match; NOT decrypted or decompressed (no age identity configured)"

_STORED_ONLY = PipelineSpec(compression="none", encryption="none")


@dataclass
class VerifyReport:
    """Everything ``verify`` found, plus what it read."""

    cluster: str
    repository: str
    scope: str  # "all" or the backup id(s) verified
    findings: list[Finding] = field(default_factory=list)
    objects: int = 0  # objects streamed (or found missing / of the wrong size)
    bytes_read: int = 0  # stored bytes read
    undecrypted: int = 0  # encrypted objects checked without an identity (stored bytes only)
    unfinished: UnfinishedSummary | None = None  # --all: unfinished writes under the cluster

    def add(self, finding: Finding) -> None:
        self.findings.append(finding)

    @property
    def failures(self) -> int:
        return sum(1 for f in self.findings if f.status == FAILED)

    @property
    def warnings(self) -> int:
        return sum(1 for f in self.findings if f.status == WARNING)

    @property
    def ok(self) -> bool:
        return self.failures == 0

    @property
    def decryption_checked(self) -> bool:
        return self.undecrypted == 0

    def job_details(self) -> dict[str, int]:
        """What a scheduled job records about this run (for monitoring)."""
        return {"checked": self.objects, "failures": self.failures, "bytes": self.bytes_read}

    def to_json(self) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "objects": self.objects, "bytes_read": self.bytes_read, "failures": self.failures, "warnings": self.warnings,
            "decryption_checked": self.decryption_checked, "undecrypted_objects": self.undecrypted}
        if self.unfinished is not None:
            summary["unfinished_writes"] = self.unfinished.to_json()
        return {
            "cluster": self.cluster,
            "repository": self.repository,
            "scope": self.scope,
            "ok": self.ok,
            "summary": summary,
            "items": [f.to_json() for f in self.findings],
        }


# --- reading objects ------------------------------------------------------------------------------


class _Discard:
    """A sink that keeps nothing: verification needs the digests, not the bytes."""

    def write(self, data: bytes, /) -> int:
        return len(data)


def _stored_only(expected: StreamResult) -> StreamResult:
    # The identity pipeline with raw = stored: compares exactly the stored size and sha256, which
    # is all that can be checked without the private key.
    return StreamResult(expected.stored_size, expected.stored_sha256, expected.stored_size, expected.stored_sha256)


class ObjectChecker:
    """Streams stored objects through the restore pipeline into nowhere; counts and logs progress."""

    def __init__(self, storage: Storage, identities: Callable[[], list[str] | None], report: VerifyReport, *,
                 every: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._storage = storage
        self._identities = identities
        self._resolved: tuple[list[str] | None] | None = None
        self.report = report
        self._every = every
        self._clock = clock
        self._last = clock()

    def identities(self) -> list[str] | None:
        """The age identities, or None when none is configured (asked once, only if needed)."""
        if self._resolved is None:
            self._resolved = (self._identities(),)
        return self._resolved[0]

    def check(self, key: str, spec: PipelineSpec, expected: StreamResult, *, size: int | None = None,
              keep: bool = False) -> tuple[str, str, bytes | None]:
        """``(status, problem, raw bytes when keep and fully checked)`` of the object at ``key``.

        ``size`` is the stored size if a listing already gave it (else the object is stat'ed)."""
        self.report.objects += 1
        try:
            if size is None:
                size = self._storage.stat(key).size
            if size != expected.stored_size:
                return FAILED, f"stored size is {size} bytes, the record says {expected.stored_size}", None
            identities = self.identities() if spec.encryption != "none" else []
            if identities is None:
                self._stream(key, _STORED_ONLY, _stored_only(expected), _Discard(), [])
                self.report.undecrypted += 1
                return PARTIAL, NO_IDENTITY, None
            sink: io.BytesIO | _Discard = io.BytesIO() if keep else _Discard()
            try:
                self._stream(key, spec, expected, sink, identities)
            except IntegrityError as e:
                if spec == _STORED_ONLY:
                    raise
                # Decoding stops at the first damaged byte, before the stored sha256 is complete.
                # Reading the stored bytes once more tells corruption in the repository apart from
                # intact bytes that do not decode (another identity, a damaged record).
                self._stream(key, _STORED_ONLY, _stored_only(expected), _Discard(), [])
                raise IntegrityError(f"the stored bytes match their record, but: {e.message}") from None
        except ObjectNotFound:
            return FAILED, "missing: the object is not in the repository", None
        except IntegrityError as e:
            return FAILED, " ".join(e.message.split()), None  # codec messages may span lines
        return OK, "", sink.getvalue() if isinstance(sink, io.BytesIO) else None

    def _stream(self, key: str, spec: PipelineSpec, expected: StreamResult, sink: io.BytesIO | _Discard,
                identities: list[str]) -> None:
        counted = CountingReader(self._storage.open_read(key), f"verify {key}", every=self._every, clock=self._clock)
        try:
            read_stream(counted, sink, spec, identities=identities, expected=expected)
        finally:
            counted.close()
            self.report.bytes_read += counted.count
            self._tick()

    def _tick(self) -> None:
        now = self._clock()
        if now - self._last >= self._every:
            self._last = now
            r = self.report
            log.get().info("verify: %d objects checked, %s read, %d problem(s) so far", r.objects,
                           human_bytes(r.bytes_read), r.failures)


# --- backups --------------------------------------------------------------------------------------


def _verify_objects(checker: ObjectChecker, kind: str, backup_id: str, prefix: str, spec: PipelineSpec,
                    objects: Sequence[StoredObject]) -> None:
    for obj in objects:
        status, problem, _ = checker.check(prefix + obj.key, spec, obj.result)
        checker.report.add(Finding(kind, obj.key, status, problem, backup_id, prefix + obj.key))


def _sysid_finding(kind: str, backup_id: str, key: str, manifest_sysid: str, sysid: str | None) -> Finding | None:
    if sysid is None or manifest_sysid == sysid:
        return None
    return Finding(kind, layout.MANIFEST_NAME, FAILED,
                   f"the backup is of system {manifest_sysid}, but the cluster is system {sysid}", backup_id, key)


def _load_logical(ctx: Context, report: VerifyReport, backup_id: str) -> LogicalManifest | None:
    try:
        return catalog.load_logical(ctx.storage, ctx.cluster, backup_id)
    except IntegrityError as e:
        key = layout.logical_prefix(ctx.cluster, backup_id) + layout.MANIFEST_NAME
        report.add(Finding("logical", layout.MANIFEST_NAME, FAILED, e.message, backup_id, key))
        return None


def _verify_logical(ctx: Context, checker: ObjectChecker, m: LogicalManifest, sysid: str | None) -> None:
    prefix = layout.logical_prefix(ctx.cluster, m.backup_id)
    bad = _sysid_finding("logical", m.backup_id, prefix + layout.MANIFEST_NAME, m.system_identifier, sysid)
    if bad:
        checker.report.add(bad)
    _verify_objects(checker, "logical", m.backup_id, prefix, m.pipeline, m.objects())


def _verify_physical_objects(ctx: Context, checker: ObjectChecker, b: PhysicalManifest, sysid: str | None) -> None:
    prefix = layout.base_prefix(ctx.cluster, b.backup_id)
    bad = _sysid_finding("physical", b.backup_id, prefix + layout.MANIFEST_NAME, b.system_identifier, sysid)
    if bad:
        checker.report.add(bad)
    _verify_objects(checker, "physical", b.backup_id, prefix, b.pipeline, b.objects())
    listed = check_file_list(checker.check, prefix, b)
    if listed:
        checker.report.add(listed)


# --- the WAL archive ------------------------------------------------------------------------------


@dataclass
class ArchiveListing:
    """One listing of ``<cluster>/wal/``: checksum records and stored objects by archived file name."""

    records: dict[str, ObjectInfo] = field(default_factory=dict)  # name → its sidecar
    objects: dict[str, ObjectInfo] = field(default_factory=dict)  # key → stored object
    by_name: dict[str, list[str]] = field(default_factory=dict)  # name → keys of objects stored under it

    @classmethod
    def read(cls, storage: Storage, cluster: str) -> ArchiveListing:
        out = cls()
        suffixes = sorted(all_suffixes(), key=len, reverse=True)
        for info in storage.list(layout.wal_root(cluster)):
            base = info.key.rsplit("/", 1)[-1]
            if base.endswith(".json") and wal.classify_or_none(base[: -len(".json")]) is not None:
                out.records[base[: -len(".json")]] = info
                continue
            for suffix in suffixes:
                name = base[: len(base) - len(suffix)]
                if base.endswith(suffix) and wal.classify_or_none(name) is not None:
                    out.objects[info.key] = info
                    out.by_name.setdefault(name, []).append(info.key)
                    break
        return out


@dataclass(frozen=True)
class _WalResult:
    status: str
    problem: str
    key: str | None = None
    missing: bool = False  # the record's object is not stored: recovery cannot fetch this file


def _check_wal_file(ctx: Context, checker: ObjectChecker, listing: ArchiveListing, name: str, sysid: str | None,
                    now: dt.datetime) -> _WalResult:
    """One archived file against its checksum record, the way ``wal fetch`` would read it."""
    try:
        meta = load_record(ctx.storage, ctx.cluster, name)
    except IntegrityError as e:
        return _WalResult(FAILED, e.message)
    key = meta.key
    if key.rsplit("/", 1)[-1][: len(name)] != name:
        return _WalResult(FAILED, f"its checksum record names no valid object key ({key!r})")
    if meta.name != name:
        return _WalResult(FAILED, f"its checksum record describes {meta.name!r}", key)
    if sysid is not None and meta.system_identifier != sysid:
        return _WalResult(FAILED, f"archived from system {meta.system_identifier}, but the cluster is system {sysid}", key)
    info = listing.objects.get(key)
    if info is None:
        try:
            info = ctx.storage.stat(key)  # archived after the listing
        except ObjectNotFound:
            written = meta.archived_at
            if now - written < PUSH_GRACE:
                return _WalResult(WARNING, f"checksum record written at {written.isoformat()} but no object {key} yet "
                                  "(a push in progress?)", key, missing=True)
            return _WalResult(FAILED, f"checksum record without its object {key}: wal fetch treats {name} as not "
                              "archived", key, missing=True)
    is_history = wal.classify_or_none(name) is wal.WalFileKind.HISTORY
    status, problem, raw = checker.check(key, meta.pipeline, meta.checksums, size=info.size, keep=is_history)
    if status == FAILED or not is_history:
        return _WalResult(status, problem, key)
    copy = meta.history
    text = raw.decode("utf-8", errors="replace") if raw is not None else copy
    if raw is not None and copy is not None and copy != text:
        return _WalResult(FAILED, "the copy of the history in its checksum record differs from the archived file", key)
    if text is not None:
        try:
            wal.parse_history(text)
        except wal.WalError as e:
            return _WalResult(FAILED, f"not a valid timeline history: {e}", key)
    return _WalResult(status, problem, key)


def _check_wal_files(ctx: Context, checker: ObjectChecker, listing: ArchiveListing, names: Sequence[str],
                     sysid: str | None, now: dt.datetime) -> dict[str, _WalResult]:
    return {n: _check_wal_file(ctx, checker, listing, n, sysid, now) for n in sorted(names)}


def _orphans(listing: ArchiveListing, results: dict[str, _WalResult]) -> list[WalLine]:
    """Stored WAL objects no checksum record points to."""
    referenced = {r.key for r in results.values() if r.key}
    out: list[WalLine] = []
    for name, keys in sorted(listing.by_name.items()):
        for key in keys:
            if key in referenced:
                continue
            if name in listing.records:
                out.append((name, WARNING, f"stray object {key}: the checksum record points to "
                            f"{results[name].key if name in results else 'another object'}", key))
            else:
                out.append((name, FAILED, f"object {key} has no checksum record: wal fetch refuses it (exit 126), "
                            "so recovery stops here", key))
    return out


def _wal_lines(results: dict[str, _WalResult], extra: Sequence[WalLine] = ()) -> list[WalLine]:
    return sorted([(n, r.status, r.problem, r.key) for n, r in results.items()] + list(extra), key=lambda x: x[0])


# --- the command ----------------------------------------------------------------------------------


def _has_identity(ctx: Context) -> bool:
    return bool(ctx.settings.age_identity or ctx.settings.age_identity_file)


def _identities_of(ctx: Context) -> Callable[[], list[str] | None]:
    def get() -> list[str] | None:
        return ctx.identities() if _has_identity(ctx) else None

    return get


def _order(backup_id: str) -> tuple[str, int]:
    # As catalog sorts ids: same-second ids carry "-N", compared as a number.
    head, _, seq = backup_id.partition("-")
    return head, int(seq or 0)


def _exists(storage: Storage, key: str) -> bool:
    try:
        storage.stat(key)
    except ObjectNotFound:
        return False
    return True


def resolve(ctx: Context, ref: str) -> tuple[list[str], list[str]]:
    """``(logical ids, physical ids)`` that ``ref`` (an id or ``latest``) names; NotFoundError if none."""
    if ref == "latest":
        newest = [(i, "logical") for i in catalog.logical_ids(ctx.storage, ctx.cluster)[-1:]]
        newest += [(i, "physical") for i in catalog.physical_ids(ctx.storage, ctx.cluster)[-1:]]
        if not newest:
            raise NotFoundError(f"no backups of cluster {ctx.cluster!r} in {ctx.storage.url}", hint="see 'pgvault list'")
        backup_id, kind = max(newest, key=lambda c: _order(c[0]))
        return ([backup_id], []) if kind == "logical" else ([], [backup_id])
    if not layout.is_backup_id(ref):
        raise NotFoundError(f"{ref!r} is not a backup id", hint="see 'pgvault list', or use 'latest' or --all")
    logical = _exists(ctx.storage, layout.logical_prefix(ctx.cluster, ref) + layout.MANIFEST_NAME)
    physical = _exists(ctx.storage, layout.base_prefix(ctx.cluster, ref) + layout.MANIFEST_NAME)
    if not logical and not physical:
        raise NotFoundError(f"no backup {ref} of cluster {ctx.cluster!r} in {ctx.storage.url}", hint="see 'pgvault list'")
    return ([ref] if logical else []), ([ref] if physical else [])


def verify(ctx: Context, ref: str | None, *, now: dt.datetime | None = None,
           clock: Callable[[], float] = time.monotonic) -> VerifyReport:
    """Verify backup ``ref`` (an id or ``latest``), or with ``None`` every backup and the whole WAL
    archive.  Problems are findings in the returned report; see the module docstring."""
    now = now or dt.datetime.now(dt.UTC)
    info = read_cluster_info(ctx.storage, ctx.cluster)
    sysid = info.system_identifier if info else None
    seg_size = info.wal_segment_size if info else None
    if ref is None:
        logical_ids = catalog.logical_ids(ctx.storage, ctx.cluster)
        physical_ids = catalog.physical_ids(ctx.storage, ctx.cluster)
        if not logical_ids and not physical_ids and seg_size is None:
            raise NotFoundError(f"nothing to verify: cluster {ctx.cluster!r} has no backups and no archived WAL in "
                                f"{ctx.storage.url}", hint="check --repository and --cluster")
    else:
        logical_ids, physical_ids = resolve(ctx, ref)
    scope = "all" if ref is None else " ".join(dict.fromkeys(logical_ids + physical_ids))  # an id may be both kinds
    report = VerifyReport(ctx.cluster, ctx.storage.url, scope)
    checker = ObjectChecker(ctx.storage, _identities_of(ctx), report, clock=clock)
    log.get().info("verify: %s of cluster %s in %s", "every backup and the WAL archive" if ref is None else
                   f"backup {report.scope}", ctx.cluster, ctx.storage.url)

    for backup_id in logical_ids:
        m = _load_logical(ctx, report, backup_id)
        if m is not None:
            _verify_logical(ctx, checker, m, sysid)
    physical = _verify_physical(ctx, checker, physical_ids, sysid)
    if ref is None or physical:
        _verify_archive(ctx, checker, physical, seg_size, sysid, now, whole=ref is None)
    if ref is None:
        _count_unfinished(ctx, report, now)
    if report.undecrypted:
        log.get().warning("verify: %d encrypted object(s) checked WITHOUT decryption (no age identity configured): "
                          "only their stored size and sha256", report.undecrypted)
    return report


def _verify_physical(ctx: Context, checker: ObjectChecker, ids: Sequence[str], sysid: str | None) -> list[PhysicalManifest]:
    """Base backups ``ids`` with every backup their chains restore from (each once), then each
    incremental's chain; the manifests of ``ids`` that could be read."""
    report = checker.report
    chains = Chains(ctx.storage, ctx.cluster, report.add)
    asked = [b for backup_id in ids if (b := chains.load(backup_id, asked=True)) is not None]
    done: set[str] = set()
    for b in asked:
        for link in chains.links(b):
            if link.backup_id not in done:
                done.add(link.backup_id)
                _verify_physical_objects(ctx, checker, link, sysid)
    failed = {f.backup_id for f in report.findings if f.status == FAILED and f.kind == "physical" and f.backup_id}
    for b in asked:
        if (chain := chains.finding(b, failed)) is not None:
            report.add(chain)
    return asked


def _count_unfinished(ctx: Context, report: VerifyReport, now: dt.datetime) -> None:
    """One item for the cluster's unfinished writes: a warning when any is older than the grace
    (or they could not be listed), else a note that writes are in progress."""
    u = report.unfinished = scan(ctx.storage, ctx.cluster, now, ctx.settings.debris_grace)
    if u.error:
        report.add(Finding("unfinished", "unfinished writes", WARNING, f"could not be listed: {u.error}"))
    elif u.count:
        report.add(Finding("unfinished", f"{u.count} unfinished write(s), {human_bytes(u.bytes)}",
                           WARNING if u.stale else OK, u.judgement()))


def _verify_archive(ctx: Context, checker: ObjectChecker, backups: list[PhysicalManifest], seg_size: int | None,
                    sysid: str | None, now: dt.datetime, *, whole: bool) -> None:
    """The WAL: every archived file (``whole``) or those ``backups`` need, their continuity and histories."""
    report = checker.report
    if seg_size is None:
        for b in backups:
            report.add(Finding("wal_continuity", f"WAL {b.first_wal}..", FAILED,
                               f"no WAL has been archived for cluster {ctx.cluster!r}; the backup cannot be made consistent",
                               b.backup_id))
        return
    listing = ArchiveListing.read(ctx.storage, ctx.cluster)
    try:
        identities = ctx.identities if _has_identity(ctx) else None
        full_index = load_archive_index(ctx.storage, ctx.cluster, seg_size, identities=identities)
    except (IntegrityError, ObjectNotFound, ValueError, KeyError, TypeError) as e:
        why = e.message if isinstance(e, IntegrityError) else f"{type(e).__name__}: {e}"
        report.add(Finding("archive", "WAL archive", FAILED, f"cannot read the archive's index: {why}; WAL continuity "
                           "and timeline histories not checked"))
        if whole:
            results = _check_wal_files(ctx, checker, listing, list(listing.records), sysid, now)
            report.findings += collapse(_wal_lines(results, _orphans(listing, results)), seg_size=seg_size)
        return

    if whole:
        names = list(listing.records)
    else:
        wanted: set[str] = set()
        recorded = full_index.including(set(full_index.unfinished))  # check every record, objects or not
        for b in backups:
            c = wal_continuity(b, recorded)
            wanted.update(c.segments)
            wanted.update(wal.history_file_name(t) for t in timeline_chain(full_index, c.timeline) if t > 1)
        names = [n for n in wanted if n in listing.records]
    results = _check_wal_files(ctx, checker, listing, names, sysid, now)
    # A record whose object is missing is not archived (wal fetch says so), unless a push is still
    # uploading it (a warning): then it is counted, or a parallel push would look like a hole.
    gone = {n for n, r in results.items() if r.missing and r.status == FAILED}
    unchecked = {n for n in listing.records if n not in listing.by_name and n not in results}
    flying = {n for n, r in results.items() if r.missing and r.status != FAILED}
    index = without(full_index.including(flying), gone | unchecked)
    damaged = {n for n, r in results.items() if r.status == FAILED and not r.missing}

    first_needed = min((wal.segment_of(wal.LSN.parse(b.start_lsn), seg_size) for b in backups), default=None)
    reported_gaps: list[tuple[str, str]] = []
    continuity: list[Finding] = []
    timelines: set[int] = set()
    for b in backups:
        c = wal_continuity(b, index)
        reported_gaps += c.gaps
        timelines.update(timeline_chain(index, c.timeline))
        continuity.append(continuity_finding(c, [n for n in c.segments if n in damaged]))
    if whole:
        timelines.update(t for t, segs in index.segments.items() if segs)
        timelines.update(index.histories)
        orphans = _orphans(listing, results)
        lines = unneeded_as_warnings(_wal_lines(results, orphans), gone, {o[0] for o in orphans if o[1] == FAILED},
                                      reported_gaps, first_needed, seg_size)
        report.findings += collapse(lines, seg_size=seg_size)
    else:
        backup_id = backups[0].backup_id if len(backups) == 1 else None
        lines = unneeded_as_warnings(_wal_lines(results), gone, set(), reported_gaps, first_needed, seg_size)
        report.findings += collapse(lines, backup_id, seg_size)
    report.findings += continuity
    report.findings += timeline_findings(index, sorted(timelines))
    if whole and index.segments:
        report.findings += uncovered_gaps(index, reported_gaps)
