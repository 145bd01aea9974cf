"""Reading what the repository holds: manifests, and resolving ``latest`` (the cluster descriptor
is :mod:`pgvault.repository.cluster`, a WAL file's checksum record :mod:`pgvault.repository.wal_record`).

One unreadable manifest (bit rot, a truncated upload by hand, an edit gone wrong) must not hide
every other backup: listings skip it and report it as a :class:`DamagedManifest`, ``latest``
passes over it with a warning naming it, and only asking for that backup by its id fails (exit 6).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from pgvault import log
from pgvault.errors import IntegrityError, NotFoundError, PgvaultError
from pgvault.repository import layout
from pgvault.repository.manifest import LogicalManifest
from pgvault.repository.physical import PhysicalManifest
from pgvault.storage import ObjectNotFound, Storage

_M = TypeVar("_M", LogicalManifest, PhysicalManifest)


def logical_ids(storage: Storage, cluster: str) -> list[str]:
    """Ids of complete logical backups (those with a manifest), oldest first."""
    return _ids_under(storage, layout.logical_root(cluster))


def physical_ids(storage: Storage, cluster: str) -> list[str]:
    """Ids of complete base backups (those with a manifest), oldest first."""
    return _ids_under(storage, layout.base_root(cluster))


def free_backup_id(storage: Storage, prefix_of: Callable[[str], str], now: dt.datetime) -> str:
    """The id for a backup starting at ``now`` whose folder (``prefix_of(id)``) holds nothing.

    Ids have one-second resolution, so a second backup started in the same second (a cron burst,
    a retry, a test) gets ``-1``, ``-2``...  Any object counts, not only a manifest: a failed run's
    leftovers must not be mixed into a new backup's folder, nor a finished backup overwritten.
    Call it under the repository lock of the operation, so two runs cannot pick the same id."""
    for seq in range(100):
        backup_id = layout.new_backup_id(now, seq)
        if next(iter(storage.list(prefix_of(backup_id))), None) is None:
            return backup_id
    raise PgvaultError(f"could not allocate a backup id: 100 backups already started at {layout.new_backup_id(now)}")


@dataclass(frozen=True)
class DamagedManifest:
    """A backup whose manifest exists but cannot be read: listed, never used."""

    kind: str  # logical | physical
    backup_id: str
    key: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"backup_id": self.backup_id, "kind": self.kind, "state": "damaged", "key": self.key,
                "reason": self.reason}


class DamagedManifestError(IntegrityError):
    """Asked for one backup by its id, and its manifest cannot be read (exit 6)."""

    def __init__(self, kind: str, backup_id: str, reason: str) -> None:
        super().__init__(f"{kind} backup {backup_id} is damaged: {reason}",
                         hint="its manifest cannot be read, so it cannot be restored; 'pgvault list' shows the usable "
                              "backups, 'pgvault verify' checks them")
        self.reason = reason


def _parse(kind: str, backup_id: str, key: str, data: bytes, loads: Callable[[bytes], _M]) -> _M:
    try:
        return loads(data)
    except IntegrityError as e:
        raise DamagedManifestError(kind, backup_id, e.message) from None
    except (AttributeError, KeyError, TypeError, ValueError) as e:  # a JSON document of the wrong shape
        raise DamagedManifestError(kind, backup_id, f"manifest {key} is unreadable: {type(e).__name__}: {e}") from None


def load_physical(storage: Storage, cluster: str, backup_id: str) -> PhysicalManifest:
    """The manifest of one base backup; :class:`NotFoundError` if there is none,
    :class:`IntegrityError` if it cannot be read."""
    key = layout.base_prefix(cluster, backup_id) + layout.MANIFEST_NAME
    try:
        data = storage.read_bytes(key)
    except ObjectNotFound:
        raise NotFoundError(f"no base backup {backup_id} for cluster {cluster!r} in {storage.url}") from None
    return _parse("base", backup_id, key, data, lambda d: PhysicalManifest.loads(d, where=key))


def scan_physical(storage: Storage, cluster: str, *, cache: dict[str, PhysicalManifest] | None = None,
                  ) -> tuple[list[PhysicalManifest], list[DamagedManifest]]:
    """Every complete base backup of ``cluster`` whose manifest reads, and those whose manifest
    does not, oldest first.  ``cache`` (by id) keeps manifests read before: they never change."""
    return _scan(storage, cluster, "physical", physical_ids(storage, cluster), load_physical, layout.base_prefix, cache)


def list_physical(storage: Storage, cluster: str) -> list[PhysicalManifest]:
    """Every usable base backup of ``cluster``, oldest first; damaged ones are skipped with a warning."""
    return _warn(*scan_physical(storage, cluster))


def _scan(storage: Storage, cluster: str, kind: str, ids: list[str], load: Callable[[Storage, str, str], _M],
          prefix: Callable[[str, str], str], cache: dict[str, _M] | None) -> tuple[list[_M], list[DamagedManifest]]:
    good: list[_M] = []
    damaged: list[DamagedManifest] = []  # never cached: a repaired manifest counts again
    cache = {} if cache is None else cache
    for backup_id in ids:
        try:
            if backup_id not in cache:
                cache[backup_id] = load(storage, cluster, backup_id)
            good.append(cache[backup_id])
        except NotFoundError:
            continue  # expired between the listing and the read
        except DamagedManifestError as e:
            damaged.append(DamagedManifest(kind, backup_id, prefix(cluster, backup_id) + layout.MANIFEST_NAME, e.reason))
    return good, damaged


def _warn(good: list[_M], damaged: list[DamagedManifest]) -> list[_M]:
    for d in damaged:
        log.get().warning("skipping %s backup %s: %s", d.kind, d.backup_id, d.reason)
    return good


def _ids_under(storage: Storage, root: str) -> list[str]:
    ids = []
    for info in storage.list(root):
        parts = info.key.split("/")
        if parts[-1] == layout.MANIFEST_NAME and len(parts) >= 2 and layout.is_backup_id(parts[-2]):
            ids.append(parts[-2])
    # Same-second ids carry "-N": compare N as a number ("-10" is newer than "-2").
    return sorted(ids, key=lambda i: (i.split("-")[0], int(i.partition("-")[2] or 0)))


def load_logical(storage: Storage, cluster: str, backup_id: str) -> LogicalManifest:
    """The manifest of one logical backup; :class:`NotFoundError` if there is none."""
    if not layout.is_backup_id(backup_id):
        raise NotFoundError(f"{backup_id!r} is not a backup id", hint="see 'pgvault list'")
    key = layout.logical_prefix(cluster, backup_id) + layout.MANIFEST_NAME
    try:
        data = storage.read_bytes(key)
    except ObjectNotFound:
        raise NotFoundError(
            f"no logical backup {backup_id} for cluster {cluster!r} in {storage.url}", hint="see 'pgvault list'"
        ) from None
    return _parse("logical", backup_id, key, data, lambda d: LogicalManifest.loads(d, where=key))


def scan_logical(storage: Storage, cluster: str, *, cache: dict[str, LogicalManifest] | None = None,
                 ) -> tuple[list[LogicalManifest], list[DamagedManifest]]:
    """Every complete logical backup of ``cluster`` whose manifest reads, and those whose
    manifest does not, oldest first.  ``cache`` as for :func:`scan_physical`."""
    return _scan(storage, cluster, "logical", logical_ids(storage, cluster), load_logical, layout.logical_prefix, cache)


def list_logical(storage: Storage, cluster: str) -> list[LogicalManifest]:
    """Every usable logical backup of ``cluster``, oldest first; damaged ones are skipped with a warning."""
    return _warn(*scan_logical(storage, cluster))


def resolve_logical(storage: Storage, cluster: str, ref: str, *, database: str | None = None) -> LogicalManifest:
    """``ref`` is a backup id or ``latest`` (the newest usable backup holding ``database`` when
    given: a damaged manifest is passed over with a warning naming it, an id names it exactly)."""
    if ref != "latest":
        return load_logical(storage, cluster, ref)
    for backup_id in reversed(logical_ids(storage, cluster)):
        try:
            m = load_logical(storage, cluster, backup_id)
        except NotFoundError:
            continue  # expired since the listing
        except IntegrityError as e:
            log.get().warning("latest: skipping logical backup %s: %s", backup_id, e.message)
            continue
        if database is None or m.database(database) is not None:
            return m
    what = f" containing database {database!r}" if database else ""
    raise NotFoundError(f"no logical backup{what} for cluster {cluster!r} in {storage.url}")
