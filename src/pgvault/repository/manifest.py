"""Manifest dataclasses and their JSON form (``{"format": 1, ...}``).

The manifest is written last: a backup exists if and only if its manifest exists.  It holds no
secrets: age recipients are public keys, and connection settings are not recorded.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from pgvault.errors import IntegrityError
from pgvault.pipeline import PipelineSpec, StreamResult

MANIFEST_FORMAT = 1
# A backup made with ``backup --jobs N`` stores a database as several objects ("parts"). Its
# manifest says format 2, so a pgvault that knows only format 1 refuses it instead of restoring
# the main object alone and missing the rows of the others.
MANIFEST_FORMAT_PARTS = 2
READABLE_FORMATS = (MANIFEST_FORMAT, MANIFEST_FORMAT_PARTS)


@dataclass(frozen=True)
class StoredObject:
    """One object of a backup: its key relative to the backup prefix, sizes and checksums."""

    name: str
    key: str
    result: StreamResult

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, **self.result.to_json()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StoredObject:
        return cls(name=d["name"], key=d["key"], result=StreamResult.from_json(d))


class SizedBackup:
    """Sizes summed over stored objects (a logical or physical backup, one database's dump and parts)."""

    def objects(self) -> list[StoredObject]:
        raise TypeError(f"{type(self).__name__} must define objects()")

    def stored_objects(self) -> list[StoredObject]:
        """Every object in the backup's folder besides the manifest: what a copy must carry."""
        return self.objects()

    @property
    def raw_size(self) -> int:
        return sum(o.result.raw_size for o in self.objects())

    @property
    def stored_size(self) -> int:
        return sum(o.result.stored_size for o in self.objects())


@dataclass(frozen=True)
class TableCount:
    """Rows of one table, counted in the dump's snapshot (or estimated when ``exact`` is off)."""

    schema: str
    name: str
    rows: int

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class Grant:
    """One privilege on a database: ``grantee`` None is PUBLIC."""

    grantee: str | None
    privilege: str  # CREATE | CONNECT | TEMPORARY
    grantable: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"grantee": self.grantee, "privilege": self.privilege, "grantable": self.grantable}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Grant:
        d = _mapping(d, "a grant")
        grantee = d.get("grantee")
        return cls(grantee=None if grantee is None else str(grantee), privilege=str(d["privilege"]),
                   grantable=bool(d.get("grantable", False)))


def _mapping(value: Any, what: str) -> dict[str, Any]:
    # TypeError is what LogicalManifest.loads turns into "manifest ... is unreadable".
    if not isinstance(value, dict):
        raise TypeError(f"{what} must be a JSON object, not {type(value).__name__}")
    return value


@dataclass(frozen=True)
class DatabaseProperties:
    """What belongs to a database rather than to its contents, read in the dump's snapshot.

    ``pg_dump --create`` would emit these for the original name only; pgvault restores under
    other names (a scratch name, ``--target-database``), so it records them here and reapplies
    them itself.  ``acl`` is the effective privilege list (the default one spelled out when
    ``datacl`` is NULL); ``settings`` are ``ALTER DATABASE ... SET`` items and ``role_settings``
    ``ALTER ROLE ... IN DATABASE ... SET`` items, both as ``name=value`` like pg_db_role_setting.
    """

    owner: str
    acl: tuple[Grant, ...] = ()
    comment: str | None = None
    connection_limit: int = -1
    is_template: bool = False
    tablespace: str = "pg_default"
    settings: tuple[str, ...] = ()
    role_settings: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "acl": [g.to_json() for g in self.acl],
            "comment": self.comment,
            "connection_limit": self.connection_limit,
            "is_template": self.is_template,
            "tablespace": self.tablespace,
            "settings": list(self.settings),
            "role_settings": {role: list(items) for role, items in self.role_settings},
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DatabaseProperties:
        d = _mapping(d, "database properties")
        return cls(
            owner=str(d["owner"]),
            acl=tuple(Grant.from_json(g) for g in d.get("acl", [])),
            comment=d.get("comment"),
            connection_limit=int(d.get("connection_limit", -1)),
            is_template=bool(d.get("is_template", False)),
            tablespace=str(d.get("tablespace", "pg_default")),
            settings=tuple(str(x) for x in d.get("settings", [])),
            role_settings=tuple((str(r), tuple(str(x) for x in items))
                                for r, items in _mapping(d.get("role_settings", {}), "role settings").items()),
        )


@dataclass(frozen=True)
class DumpPart:
    """A data-only dump of some of a database's tables (``backup --jobs``), in the main dump's snapshot."""

    object: StoredObject
    tables: tuple[tuple[str, str], ...]  # (schema, table) whose rows this object holds

    def to_json(self) -> dict[str, Any]:
        return {"object": self.object.to_json(), "tables": [list(t) for t in self.tables]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DumpPart:
        tables = []
        for t in d.get("tables", []):
            if not isinstance(t, list) or len(t) != 2 or not all(isinstance(x, str) for x in t):
                raise IntegrityError(f"a dump part names a table as {t!r}, not [schema, table]")
            tables.append((t[0], t[1]))
        return cls(object=StoredObject.from_json(d["object"]), tables=tuple(tables))


@dataclass(frozen=True)
class DatabaseEntry(SizedBackup):
    """One dumped database."""

    name: str
    object: StoredObject
    encoding: str
    collate: str
    ctype: str
    size_bytes: int
    row_counts_exact: bool
    tables: tuple[TableCount, ...] = ()
    # None in manifests written before pgvault recorded them: restores then say so.
    properties: DatabaseProperties | None = None
    # ``backup --jobs``: data-only dumps of the tables the main object (``object``) excluded.
    parts: tuple[DumpPart, ...] = ()

    def objects(self) -> list[StoredObject]:
        """The main dump, then its parts."""
        return [self.object, *(p.object for p in self.parts)]

    def part_of(self, schema: str, table: str) -> DumpPart | None:
        """The part holding the rows of ``schema.table`` (None: the main object holds them)."""
        return next((p for p in self.parts if (schema, table) in p.tables), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "object": self.object.to_json(),
            **({"parts": [p.to_json() for p in self.parts]} if self.parts else {}),
            "encoding": self.encoding,
            "collate": self.collate,
            "ctype": self.ctype,
            "size_bytes": self.size_bytes,
            "row_counts_exact": self.row_counts_exact,
            "tables": [asdict(t) for t in self.tables],
            **({"properties": self.properties.to_json()} if self.properties is not None else {}),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DatabaseEntry:
        return cls(
            name=d["name"],
            object=StoredObject.from_json(d["object"]),
            encoding=d.get("encoding", "UTF8"),
            collate=d.get("collate", ""),
            ctype=d.get("ctype", ""),
            size_bytes=int(d.get("size_bytes", 0)),
            row_counts_exact=bool(d.get("row_counts_exact", False)),
            tables=tuple(TableCount(**t) for t in d.get("tables", [])),
            properties=DatabaseProperties.from_json(d["properties"]) if d.get("properties") else None,
            parts=tuple(DumpPart.from_json(p) for p in d.get("parts", [])),
        )


@dataclass(frozen=True)
class LogicalManifest(SizedBackup):
    """A complete logical backup."""

    backup_id: str
    cluster: str
    system_identifier: str
    server_version: str
    server_version_num: int
    pg_dump_version: str
    client_bindir: str
    started_at: str
    finished_at: str
    duration_seconds: float
    pipeline: PipelineSpec
    host: str
    pgvault_version: str
    databases: tuple[DatabaseEntry, ...]
    globals: StoredObject | None = None
    kind: str = "logical"
    extra: dict[str, Any] = field(default_factory=dict)

    def database(self, name: str) -> DatabaseEntry | None:
        """The entry of database ``name``, if this backup has it."""
        return next((d for d in self.databases if d.name == name), None)

    def objects(self) -> list[StoredObject]:
        """Every stored object of the backup."""
        objs = [o for d in self.databases for o in d.objects()]
        return ([self.globals] if self.globals else []) + objs

    def to_json(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT_PARTS if any(d.parts for d in self.databases) else MANIFEST_FORMAT,
            "kind": self.kind,
            "backup_id": self.backup_id,
            "cluster": self.cluster,
            "system_identifier": self.system_identifier,
            "server_version": self.server_version,
            "server_version_num": self.server_version_num,
            "pg_dump_version": self.pg_dump_version,
            "client_bindir": self.client_bindir,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration_seconds": round(self.duration_seconds, 3),
            "pipeline": self.pipeline.to_json(),
            "host": self.host,
            "pgvault_version": self.pgvault_version,
            "raw_size": self.raw_size,
            "stored_size": self.stored_size,
            "globals": self.globals.to_json() if self.globals else None,
            "databases": [d.to_json() for d in self.databases],
            **({"extra": self.extra} if self.extra else {}),
        }

    def dumps(self) -> bytes:
        return (json.dumps(self.to_json(), indent=2) + "\n").encode("utf-8")

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LogicalManifest:
        if d.get("format") not in READABLE_FORMATS or d.get("kind") != "logical":
            raise IntegrityError(f"unsupported manifest (format {d.get('format')!r}, kind {d.get('kind')!r})")
        return cls(
            backup_id=d["backup_id"],
            cluster=d["cluster"],
            system_identifier=str(d["system_identifier"]),
            server_version=d["server_version"],
            server_version_num=int(d["server_version_num"]),
            pg_dump_version=d["pg_dump_version"],
            client_bindir=d.get("client_bindir", ""),
            started_at=d["started_at"],
            finished_at=d["finished_at"],
            duration_seconds=float(d["duration_seconds"]),
            pipeline=PipelineSpec.from_json(d["pipeline"]),
            host=d.get("host", ""),
            pgvault_version=d.get("pgvault_version", ""),
            databases=tuple(DatabaseEntry.from_json(x) for x in d["databases"]),
            globals=StoredObject.from_json(d["globals"]) if d.get("globals") else None,
            extra=d.get("extra", {}),
        )

    @classmethod
    def loads(cls, data: bytes, *, where: str) -> LogicalManifest:
        """Parse manifest bytes; ``where`` names the key for error messages."""
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict):
                raise TypeError(f"expected a JSON object, got {type(doc).__name__}")
            return cls.from_json(doc)
        except (ValueError, KeyError, TypeError) as e:
            raise IntegrityError(f"manifest {where} is unreadable: {type(e).__name__}: {e}") from None
        except IntegrityError as e:
            raise IntegrityError(f"manifest {where}: {e}") from None
