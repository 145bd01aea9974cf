"""The cluster descriptor (``<cluster>/cluster.json``), typed, read and written in one place.

It binds a cluster name in a repository to one PostgreSQL system identifier: every backup and
every archived WAL file of the name must come from that system.  It also records the WAL segment
size once WAL is archived (fixed at initdb), which reading the archive needs.  The first backup
or push creates it (and the repository descriptor ``pgvault.json``); nothing else changes it,
except adding the segment size to a descriptor a logical backup created. On a write-once (S3
Object Lock) repository that addition is not a rewrite but a create-only amendment,
``<cluster>/cluster-segment-size.json``, which readers merge.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from pgvault.errors import ConfigError, IntegrityError
from pgvault.pg import wal
from pgvault.repository import layout
from pgvault.repository.stored_json import Fields
from pgvault.storage import ObjectExists, ObjectNotFound, Storage
from pgvault.storage.base import is_write_once


@dataclass(frozen=True)
class ClusterInfo:
    """What ``cluster.json`` says: the cluster's name, its system identifier, the server major
    version first seen, and its WAL segment size (None until WAL or a base backup was stored)."""

    cluster: str
    system_identifier: str
    server_major: int | None = None
    wal_segment_size: int | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"cluster": self.cluster, "system_identifier": self.system_identifier,
                               "server_major": self.server_major}
        if self.wal_segment_size:
            doc["wal_segment_size"] = self.wal_segment_size
        return doc

    def dumps(self) -> bytes:
        return json.dumps(self.to_json(), indent=2).encode() + b"\n"

    @classmethod
    def from_json(cls, doc: object, *, cluster: str, where: str) -> ClusterInfo:
        """Validate and type a descriptor; :class:`IntegrityError` naming every bad or missing key.

        Only the system identifier is required (it may be a JSON number: descriptors have been
        written by hand); ``cluster`` defaults to the name the descriptor is stored under."""
        f = Fields(doc, where)
        name = f.text("cluster", required=False) or cluster
        sysid = f.identifier("system_identifier")
        major = f.integer("server_major", required=False, minimum=1)
        seg_size = f.integer("wal_segment_size", required=False, minimum=1)
        if seg_size is not None and seg_size not in wal.SEGMENT_SIZES:
            f.problems.append(f"'wal_segment_size' must be a power of two from 1 MiB to 1 GiB (got {seg_size})")
        f.check()
        assert sysid is not None
        return cls(cluster=name, system_identifier=sysid, server_major=major, wal_segment_size=seg_size)


def read_cluster_info(storage: Storage, cluster: str) -> ClusterInfo | None:
    """The cluster descriptor, or None when the cluster has never been backed up;
    :class:`IntegrityError` when it is malformed."""
    key = layout.cluster_key(cluster)
    try:
        data = storage.read_bytes(key)
    except ObjectNotFound:
        return None
    where = f"{key} in {storage.url}"
    try:
        doc = json.loads(data)
    except ValueError:
        raise IntegrityError(f"{where} is not valid JSON") from None
    info = ClusterInfo.from_json(doc, cluster=cluster, where=where)
    if info.wal_segment_size is None and is_write_once(storage):
        info = dataclasses.replace(info, wal_segment_size=_amended_segment_size(storage, cluster))
    return info


def _amended_segment_size(storage: Storage, cluster: str) -> int | None:
    key = layout.segment_size_key(cluster)
    try:
        doc = json.loads(storage.read_bytes(key))
    except ObjectNotFound:
        return None
    except ValueError:
        raise IntegrityError(f"{key} in {storage.url} is not valid JSON") from None
    f = Fields(doc, f"{key} in {storage.url}")
    size = f.integer("wal_segment_size", minimum=1)
    if size is not None and size not in wal.SEGMENT_SIZES:
        f.problems.append(f"'wal_segment_size' must be a power of two from 1 MiB to 1 GiB (got {size})")
    f.check()
    return size


def ensure_cluster(
    storage: Storage, cluster: str, *, system_identifier: str, server_major: int | None, wal_segment_size: int | None = None
) -> ClusterInfo:
    """Create the repository descriptor and the cluster descriptor on first use; afterwards refuse
    a server whose system identifier differs (a different cluster configured under the same name
    would silently mix two clusters' backups, and for WAL it would corrupt recovery)."""
    try:
        storage.put_if_absent(
            layout.DESCRIPTOR_KEY,
            json.dumps({"format": layout.REPOSITORY_FORMAT, "tool": "pgvault"}, indent=2).encode() + b"\n",
        )
    except ObjectExists:
        pass
    info = ClusterInfo(cluster, system_identifier, server_major, wal_segment_size or None)
    try:
        storage.put_if_absent(layout.cluster_key(cluster), info.dumps())
        return info
    except ObjectExists:
        pass
    known = read_cluster_info(storage, cluster)
    if known is None or known.system_identifier != system_identifier:
        raise ConfigError(
            [
                f"cluster {cluster!r} in {storage.url} belongs to system identifier "
                f"{known.system_identifier if known else None}, but the server has {system_identifier}"
            ],
            hint="use a different cluster name (--cluster / PGVAULT_CLUSTER) for a different PostgreSQL cluster",
        )
    if wal_segment_size and known.wal_segment_size is None:
        # First WAL archived for a cluster a logical backup registered: record the segment size.
        known = dataclasses.replace(known, wal_segment_size=wal_segment_size)
        if is_write_once(storage):
            try:
                storage.put_if_absent(layout.segment_size_key(cluster),
                                      json.dumps({"wal_segment_size": wal_segment_size}).encode() + b"\n")
            except ObjectExists:
                pass  # a concurrent first push of the same cluster: same server, same size
        else:
            with storage.open_write(layout.cluster_key(cluster)) as w:
                w.write(known.dumps())
    return known
