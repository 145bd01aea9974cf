"""The manifest of a physical base backup (``{"format": 1, "kind": "physical", ...}``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pgvault.errors import IntegrityError
from pgvault.pipeline import PipelineSpec
from pgvault.repository.manifest import MANIFEST_FORMAT, SizedBackup, StoredObject

BACKUP_TYPES = ("full", "incr", "diff")


@dataclass(frozen=True)
class TablespaceEntry:
    """One user tablespace: where it lived, and its tar object."""

    oid: str
    name: str
    location: str
    object: StoredObject
    files: int

    def to_json(self) -> dict[str, Any]:
        return {"oid": self.oid, "name": self.name, "location": self.location, "files": self.files,
                "object": self.object.to_json()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TablespaceEntry:
        return cls(str(d["oid"]), d["name"], d["location"], StoredObject.from_json(d["object"]), int(d.get("files", 0)))


@dataclass(frozen=True)
class RelationEntry:
    """One table's identity at a known point: what ``wal find`` follows through the WAL."""

    oid: int
    relfilenode: int
    schema: str
    name: str
    relkind: str
    toast_oid: int

    def to_json(self) -> list[Any]:
        return [self.oid, self.relfilenode, self.schema, self.name, self.relkind, self.toast_oid]

    @classmethod
    def from_json(cls, row: list[Any]) -> RelationEntry:
        return cls(int(row[0]), int(row[1]), str(row[2]), str(row[3]), str(row[4]), int(row[5]))


@dataclass(frozen=True)
class DatabaseRelations:
    """The tables of one database and their heap files (``pg_relation_filenode``), read at ``lsn``
    (just after the backup started; the WAL from the backup's start carries them forward)."""

    name: str
    oid: int
    lsn: str
    relations: tuple[RelationEntry, ...]

    def find(self, schema: str, name: str) -> RelationEntry | None:
        return next((r for r in self.relations if r.schema == schema and r.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "oid": self.oid, "lsn": self.lsn, "relations": [r.to_json() for r in self.relations]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DatabaseRelations:
        return cls(str(d["name"]), int(d["oid"]), str(d["lsn"]),
                   tuple(RelationEntry.from_json(r) for r in d.get("relations", [])))


@dataclass(frozen=True)
class BadPageEntry:
    """One page whose checksum failed while the backup read it (twice), named as PostgreSQL would."""

    file: str  # as stored in the backup: base/16384/16397, pg_tblspc/16390/PG_18_.../16384/16401.1
    relfilenode: int
    fork: str
    block: int  # within the relation fork (segment x 131072 + block in the file)
    stored: int
    computed: int
    relation: str = ""  # schema.name in its database, when the server could name it
    database: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "relation": self.relation, "database": self.database, "relfilenode": self.relfilenode,
                "fork": self.fork, "block": self.block, "stored": f"{self.stored:#06x}", "computed": f"{self.computed:#06x}"}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BadPageEntry:
        return cls(str(d["file"]), int(d["relfilenode"]), str(d["fork"]), int(d["block"]), int(str(d["stored"]), 16),
                   int(str(d["computed"]), 16), str(d.get("relation", "")), str(d.get("database", "")))

    def describe(self) -> str:
        what = f"{self.relation} in database {self.database}" if self.relation else f"relfilenode {self.relfilenode}"
        fork = "" if self.fork == "main" else f" ({self.fork} fork)"
        return (f"{self.file} block {self.block}{fork}: {what}; checksum {self.stored:#06x} stored, "
                f"{self.computed:#06x} computed")


@dataclass(frozen=True)
class PageChecksums:
    """What checking every page's checksum found while the backup read the cluster."""

    checked: bool  # False: the cluster has no data checksums, or checking was turned off
    pages: int = 0
    failed: int = 0
    bad_pages: tuple[BadPageEntry, ...] = ()  # the first MAX_LISTED; ``failed`` counts them all
    unaligned: tuple[str, ...] = ()  # relation files not made of whole pages (not checked)
    reason: str = ""  # why not checked

    def to_json(self) -> dict[str, Any]:
        return {"checked": self.checked, "reason": self.reason, "pages": self.pages, "failed": self.failed,
                "bad_pages": [b.to_json() for b in self.bad_pages], "unaligned": list(self.unaligned)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PageChecksums:
        return cls(bool(d["checked"]), int(d.get("pages", 0)), int(d.get("failed", 0)),
                   tuple(BadPageEntry.from_json(b) for b in d.get("bad_pages", [])), tuple(d.get("unaligned", [])),
                   str(d.get("reason", "")))


@dataclass(frozen=True)
class PhysicalManifest(SizedBackup):
    """A complete base backup: restorable once the WAL from ``first_wal`` to ``last_wal`` is archived
    (checked before this manifest was written)."""

    backup_id: str
    cluster: str
    system_identifier: str
    server_version: str
    server_version_num: int
    wal_segment_size: int
    timeline: int
    start_lsn: str
    stop_lsn: str
    first_wal: str
    last_wal: str
    started_at: str
    finished_at: str
    duration_seconds: float
    backup_label: str
    tablespace_map: str
    pipeline: PipelineSpec
    base: StoredObject
    base_files: int
    tablespaces: tuple[TablespaceEntry, ...]
    host: str
    pgvault_version: str
    kind: str = "physical"
    # Server clock at pg_backup_stop and the next transaction id then (pg_current_snapshot's xmax,
    # 64-bit): the earliest time / xid a recovery from this backup can stop at.  Manifests from
    # before these fields fall back to finished_at / unknown.
    stopped_at: str = ""
    next_xid: int | None = None
    # The data directory is split into base.tar plus base-1.tar ... (backup.parallel), each a
    # complete tar written and restored in parallel; older manifests have none.
    base_parts: tuple[StoredObject, ...] = ()
    # Each database's tables and their files at the backup's start (``wal find``'s anchor); None in
    # manifests from before it was recorded, or when it could not be read.
    relation_maps: tuple[DatabaseRelations, ...] | None = None
    # Page checksums checked while reading; None in manifests from before they were.
    page_checksums: PageChecksums | None = None
    # Incremental chains (issue 13): "full", "incr" (against ``reference``, the newest backup of
    # its chain) or "diff" (against the newest full).  A non-full backup needs every backup up its
    # chain to restore; ``reference_start_lsn`` is the reference's start, where its pages were taken from.
    backup_type: str = "full"
    type_reason: str = ""  # why this type (e.g. why an incr asked for was taken full)
    reference: str | None = None
    reference_start_lsn: str = ""
    # Every regular file the backup holds (path, size, SHA-256 of relation files, blocks of an
    # incremental file), a zstd JSON object readable without the age identity (FILES_SPEC); None
    # in manifests from before it existed.  data_checksums and database_rows (pg_database oid ->
    # xmin) decide what the next incremental may take from this one.
    files: StoredObject | None = None
    data_checksums: bool | None = None
    database_rows: tuple[tuple[int, int], ...] = ()
    # Taken on a streaming standby: the stop LSN is its minRecoveryPoint (no backup-end record in
    # the WAL) and the copied pg_control marks the end (operations/physical/standby_backup.py).
    from_standby: bool = False

    @property
    def stop_time(self) -> str:
        return self.stopped_at or self.finished_at

    def objects(self) -> list[StoredObject]:
        """Every stored object of the backup's data (the tars; not the file list, see ``files``)."""
        return [self.base, *self.base_parts] + [t.object for t in self.tablespaces]

    def stored_objects(self) -> list[StoredObject]:
        return self.objects() + ([] if self.files is None else [self.files])

    @property
    def is_incremental(self) -> bool:
        return self.backup_type != "full"

    def to_json(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "kind": self.kind,
            "backup_id": self.backup_id,
            "cluster": self.cluster,
            "system_identifier": self.system_identifier,
            "server_version": self.server_version,
            "server_version_num": self.server_version_num,
            "wal_segment_size": self.wal_segment_size,
            "timeline": self.timeline,
            "start_lsn": self.start_lsn,
            "stop_lsn": self.stop_lsn,
            "first_wal": self.first_wal,
            "last_wal": self.last_wal,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "stopped_at": self.stop_time,
            "next_xid": self.next_xid,
            "duration_seconds": round(self.duration_seconds, 3),
            "backup_label": self.backup_label,
            "tablespace_map": self.tablespace_map,
            # Only BASE_BACKUP over the replication protocol produces a server backup_manifest;
            # the low-level API we use does not (see operations/physical/basebackup.py).
            "server_backup_manifest": None,
            "pipeline": self.pipeline.to_json(),
            "raw_size": self.raw_size,
            "stored_size": self.stored_size,
            "base": {"files": self.base_files, "object": self.base.to_json(),
                     "parts": [o.to_json() for o in self.base_parts]},
            "tablespaces": [t.to_json() for t in self.tablespaces],
            "host": self.host,
            "pgvault_version": self.pgvault_version,
        } | ({} if self.relation_maps is None else {"relation_maps": [m.to_json() for m in self.relation_maps]}) | (
            {} if self.page_checksums is None else {"page_checksums": self.page_checksums.to_json()}) | {
            "backup_type": self.backup_type, "type_reason": self.type_reason, "reference": self.reference, "reference_start_lsn": self.reference_start_lsn,
            "files": None if self.files is None else self.files.to_json(), "data_checksums": self.data_checksums,
            "database_rows": [list(r) for r in self.database_rows], "from_standby": self.from_standby}

    def dumps(self) -> bytes:
        return (json.dumps(self.to_json(), indent=2) + "\n").encode("utf-8")

    @classmethod
    def loads(cls, data: bytes, *, where: str) -> PhysicalManifest:
        try:
            d = json.loads(data)
            if not isinstance(d, dict) or d.get("format") != MANIFEST_FORMAT or d.get("kind") != "physical":
                raise IntegrityError(f"manifest {where} is not a format-{MANIFEST_FORMAT} physical manifest")
            if (d.get("backup_type") or "full") not in BACKUP_TYPES or ((d.get("backup_type") or "full") != "full"
                                                                        and not d.get("reference")):
                raise IntegrityError(f"manifest {where}: backup_type {d.get('backup_type')!r} with reference "
                                     f"{d.get('reference')!r} is not a full, incr or diff backup with its reference")
            return cls(
                backup_id=d["backup_id"], cluster=d["cluster"], system_identifier=str(d["system_identifier"]),
                server_version=d["server_version"], server_version_num=int(d["server_version_num"]),
                wal_segment_size=int(d["wal_segment_size"]), timeline=int(d["timeline"]),
                start_lsn=d["start_lsn"], stop_lsn=d["stop_lsn"], first_wal=d["first_wal"], last_wal=d["last_wal"],
                started_at=d["started_at"], finished_at=d["finished_at"], duration_seconds=float(d["duration_seconds"]),
                backup_label=d["backup_label"], tablespace_map=d.get("tablespace_map", ""),
                pipeline=PipelineSpec.from_json(d["pipeline"]), base=StoredObject.from_json(d["base"]["object"]),
                base_files=int(d["base"].get("files", 0)),
                tablespaces=tuple(TablespaceEntry.from_json(t) for t in d.get("tablespaces", [])),
                host=d.get("host", ""), pgvault_version=d.get("pgvault_version", ""),
                stopped_at=d.get("stopped_at") or "",
                next_xid=int(d["next_xid"]) if d.get("next_xid") is not None else None,
                base_parts=tuple(StoredObject.from_json(o) for o in d["base"].get("parts", [])),
                relation_maps=(None if d.get("relation_maps") is None
                               else tuple(DatabaseRelations.from_json(m) for m in d["relation_maps"])),
                page_checksums=None if d.get("page_checksums") is None else PageChecksums.from_json(d["page_checksums"]),
                backup_type=str(d.get("backup_type") or "full"), type_reason=str(d.get("type_reason") or ""),
                reference=d.get("reference"),
                reference_start_lsn=str(d.get("reference_start_lsn") or ""),
                files=None if d.get("files") is None else StoredObject.from_json(d["files"]),
                data_checksums=d.get("data_checksums"),
                database_rows=tuple((int(r[0]), int(r[1])) for r in d.get("database_rows", [])),
                from_standby=bool(d.get("from_standby", False)),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise IntegrityError(f"manifest {where} is unreadable: {type(e).__name__}: {e}") from None
