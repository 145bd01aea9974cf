"""Reading what the repository holds: manifests, and resolving ``latest``."""

from __future__ import annotations

import json
from typing import Any

from pgvault.errors import IntegrityError, NotFoundError
from pgvault.repository import layout
from pgvault.repository.manifest import LogicalManifest
from pgvault.repository.physical import PhysicalManifest
from pgvault.storage import ObjectNotFound, Storage


def logical_ids(storage: Storage, cluster: str) -> list[str]:
    """Ids of complete logical backups (those with a manifest), oldest first."""
    return _ids_under(storage, layout.logical_root(cluster))


def physical_ids(storage: Storage, cluster: str) -> list[str]:
    """Ids of complete base backups (those with a manifest), oldest first."""
    return _ids_under(storage, layout.base_root(cluster))


def load_physical(storage: Storage, cluster: str, backup_id: str) -> PhysicalManifest:
    """The manifest of one base backup; :class:`NotFoundError` if there is none."""
    key = layout.base_prefix(cluster, backup_id) + layout.MANIFEST_NAME
    try:
        return PhysicalManifest.loads(storage.read_bytes(key), where=key)
    except ObjectNotFound:
        raise NotFoundError(f"no base backup {backup_id} for cluster {cluster!r} in {storage.url}") from None


def list_physical(storage: Storage, cluster: str) -> list[PhysicalManifest]:
    """Every complete base backup of ``cluster``, oldest first."""
    return [load_physical(storage, cluster, i) for i in physical_ids(storage, cluster)]


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
    return LogicalManifest.loads(data, where=key)


def list_logical(storage: Storage, cluster: str) -> list[LogicalManifest]:
    """Every complete logical backup of ``cluster``, oldest first."""
    return [load_logical(storage, cluster, i) for i in logical_ids(storage, cluster)]


def resolve_logical(storage: Storage, cluster: str, ref: str, *, database: str | None = None) -> LogicalManifest:
    """``ref`` is a backup id or ``latest`` (the newest backup holding ``database`` when given)."""
    if ref != "latest":
        return load_logical(storage, cluster, ref)
    for backup_id in reversed(logical_ids(storage, cluster)):
        m = load_logical(storage, cluster, backup_id)
        if database is None or m.database(database) is not None:
            return m
    what = f" containing database {database!r}" if database else ""
    raise NotFoundError(f"no logical backup{what} for cluster {cluster!r} in {storage.url}")


def read_cluster_info(storage: Storage, cluster: str) -> dict[str, Any] | None:
    """The cluster descriptor, or None when the cluster has never been backed up."""
    try:
        data = storage.read_bytes(layout.cluster_key(cluster))
    except ObjectNotFound:
        return None
    try:
        doc = json.loads(data)
    except ValueError:
        raise IntegrityError(f"{layout.cluster_key(cluster)} in {storage.url} is not valid JSON") from None
    if not isinstance(doc, dict):
        raise IntegrityError(f"{layout.cluster_key(cluster)} in {storage.url} is not a JSON object")
    return doc


def ensure_cluster(
    storage: Storage, cluster: str, *, system_identifier: str, server_major: int | None, wal_segment_size: int | None = None
) -> dict[str, Any]:
    """Create the repository descriptor and the cluster descriptor on first use; afterwards refuse
    a server whose system identifier differs (a different cluster configured under the same name
    would silently mix two clusters' backups, and for WAL it would corrupt recovery)."""
    from pgvault.errors import ConfigError
    from pgvault.storage import ObjectExists

    try:
        storage.put_if_absent(
            layout.DESCRIPTOR_KEY,
            json.dumps({"format": layout.REPOSITORY_FORMAT, "tool": "pgvault"}, indent=2).encode() + b"\n",
        )
    except ObjectExists:
        pass
    doc: dict[str, Any] = {"cluster": cluster, "system_identifier": system_identifier, "server_major": server_major}
    if wal_segment_size:
        doc["wal_segment_size"] = wal_segment_size
    try:
        storage.put_if_absent(layout.cluster_key(cluster), json.dumps(doc, indent=2).encode() + b"\n")
        return doc
    except ObjectExists:
        pass
    known = read_cluster_info(storage, cluster) or {}
    if str(known.get("system_identifier")) != system_identifier:
        raise ConfigError(
            [
                f"cluster {cluster!r} in {storage.url} belongs to system identifier {known.get('system_identifier')}, "
                f"but the server has {system_identifier}"
            ],
            hint="use a different cluster name (--cluster / PGVAULT_CLUSTER) for a different PostgreSQL cluster",
        )
    if wal_segment_size and "wal_segment_size" not in known:
        # First WAL archived for a cluster a logical backup registered: record the segment size.
        known = {**known, "wal_segment_size": wal_segment_size}
        with storage.open_write(layout.cluster_key(cluster)) as w:
            w.write(json.dumps(known, indent=2).encode() + b"\n")
    return known
