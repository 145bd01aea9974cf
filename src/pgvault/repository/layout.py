"""Key naming in the repository: the one place that knows where things live.

```
pgvault.json                                  repository descriptor (format version)
<cluster>/cluster.json                        system identifier, major version
<cluster>/logical/<YYYY>/<MM>/<backup-id>/    manifest.json + one object per database + globals
<cluster>/locks/<operation>.lock              one writer per cluster per operation
```
Year/month prefixes let object-store lifecycle rules act by prefix.  Object names end in the
pipeline stages applied (``.zst``, ``.age``) so a person can undo them with stock tools.
"""

from __future__ import annotations

import datetime as dt
import re

REPOSITORY_FORMAT = 1
DESCRIPTOR_KEY = "pgvault.json"
MANIFEST_NAME = "manifest.json"

_ID_RE = re.compile(r"^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z(?:-(\d+))?$")
_SAFE = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def new_backup_id(now: dt.datetime, seq: int = 0) -> str:
    """Sortable id from a UTC time, e.g. ``20261125T123456Z`` (``-2`` etc. on a same-second clash)."""
    base = now.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return base if seq == 0 else f"{base}-{seq}"


def parse_backup_id(backup_id: str) -> dt.datetime:
    """The UTC time a backup id encodes; ValueError if it is not an id."""
    m = _ID_RE.match(backup_id)
    if not m:
        raise ValueError(f"not a backup id: {backup_id!r}")
    y, mo, d, h, mi, s = (int(x) for x in m.groups()[:6])
    return dt.datetime(y, mo, d, h, mi, s, tzinfo=dt.UTC)


def is_backup_id(text: str) -> bool:
    """True for strings that are backup ids (shape and a real date/time)."""
    try:
        parse_backup_id(text)
    except ValueError:
        return False
    return True


def cluster_key(cluster: str) -> str:
    return f"{cluster}/cluster.json"


def segment_size_key(cluster: str) -> str:
    """Write-once amendment of ``cluster.json`` on a write-once repository (repository/cluster.py)."""
    return f"{cluster}/cluster-segment-size.json"


def logical_root(cluster: str) -> str:
    return f"{cluster}/logical/"


def logical_prefix(cluster: str, backup_id: str) -> str:
    """``<cluster>/logical/<YYYY>/<MM>/<id>/``."""
    t = parse_backup_id(backup_id)
    return f"{cluster}/logical/{t:%Y}/{t:%m}/{backup_id}/"


def wal_root(cluster: str) -> str:
    return f"{cluster}/wal/"


def _wal_dir(cluster: str, name: str) -> str:
    # Segments, .partial and backup-history files group by timeline + log id (their first 16 hex
    # digits) so no single prefix grows without bound; timeline history files sit at the root.
    return f"{cluster}/wal/" if name.endswith(".history") else f"{cluster}/wal/{name[:16]}/"


def wal_object(cluster: str, name: str, suffix: str) -> str:
    """Key of an archived WAL file, e.g. ``main/wal/0000000100000000/000000010000000000000003.zst.age``."""
    return _wal_dir(cluster, name) + name + suffix


def wal_meta(cluster: str, name: str) -> str:
    """Key of the JSON sidecar holding an archived WAL file's checksums and pipeline.

    The sidecar is what lets ``wal push`` compare content with what is stored (the archive host
    holds no private key, so it cannot decrypt the object) and lets ``wal fetch`` verify it."""
    return _wal_dir(cluster, name) + name + ".json"


def base_root(cluster: str) -> str:
    return f"{cluster}/base/"


def base_prefix(cluster: str, backup_id: str) -> str:
    """``<cluster>/base/<id>/``: manifest.json, base.tar.zst.age, tablespace-<oid>.tar.zst.age."""
    parse_backup_id(backup_id)
    return f"{cluster}/base/{backup_id}/"


def lock_key(cluster: str, operation: str) -> str:
    return f"{cluster}/locks/{operation}.lock"


def encode_name(name: str) -> str:
    """A database name as a key component: anything but [A-Za-z0-9_-] becomes %XX (dots too)."""
    return "".join(c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode("utf-8")) for c in name)


def database_object(dbname: str, suffix: str) -> str:
    """Object name of one database's dump, e.g. ``app.dump.zst.age``."""
    return f"{encode_name(dbname)}.dump{suffix}"


def database_part_object(dbname: str, part: int, suffix: str) -> str:
    """Object name of one data part of a ``backup --jobs`` dump, e.g. ``app.part1.dump.zst.age``.

    Never the name of another database's dump: an encoded name has no dots.
    """
    return f"{encode_name(dbname)}.part{part}.dump{suffix}"


def globals_object(suffix: str) -> str:
    """Object name of the cluster globals (roles, tablespaces), a plain SQL script."""
    return f"globals.sql{suffix}"
