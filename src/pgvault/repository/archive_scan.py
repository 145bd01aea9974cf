"""Reading the WAL archive of one cluster: the :class:`ArchiveIndex` snapshot (one listing plus
the small history files and restore point records), the names its objects store, and waiting
until given segments have been archived (base backups, restore points).  The snapshot itself lives
in :mod:`pgvault.repository.archive_index`, free of I/O, for the pure planners."""

from __future__ import annotations

import datetime as dt
import io
import json
import time
from collections.abc import Callable

from pgvault.errors import IntegrityError, PgvaultError
from pgvault.pg import wal
from pgvault.pipeline import all_suffixes
from pgvault.repository import layout
from pgvault.repository.archive_index import ArchiveIndex, RestorePoint
from pgvault.repository.wal_record import archived_at, read_record
from pgvault.storage import ObjectNotFound, Storage


def load_archive_index(
    storage: Storage, cluster: str, seg_size: int, identities: Callable[[], list[str]] | None = None
) -> ArchiveIndex:
    """List the archive once and read its history files and restore points.

    History files are tiny and not secret, so ``wal push`` keeps a copy in their checksum record
    (readable without the private key); ``identities`` is only needed for records without one."""
    segments: dict[int, set[int]] = {}
    history_names: list[str] = []
    partials: set[str] = set()
    records: dict[str, dt.datetime] = {}
    objects: set[str] = set()
    for info in storage.list(layout.wal_root(cluster)):
        base = info.key.rsplit("/", 1)[-1]
        if not base.endswith(".json"):
            stem = stored_name(base)
            if stem:
                objects.add(stem)
            continue
        name = base[: -len(".json")]
        kind = wal.classify_or_none(name)
        if kind is wal.WalFileKind.SEGMENT:
            records[name] = info.modified
        elif kind is wal.WalFileKind.HISTORY:
            history_names.append(name)
        elif kind is wal.WalFileKind.PARTIAL:
            partials.add(name)
    unfinished: dict[str, dt.datetime] = {}
    for name, written in records.items():
        if name not in objects:
            # The record's own time, by the same clock as wal fetch (the rare records without
            # object only: its age decides between an upload under way and a hole).
            unfinished[name] = archived_at(storage, cluster, name) or written
            continue
        tli, segno = wal.parse_segment_name(name, seg_size)
        segments.setdefault(tli, set()).add(segno)
    histories = {int(n[:8], 16): _read_history(storage, cluster, n, identities) for n in history_names}
    return ArchiveIndex(
        seg_size=seg_size,
        segments={t: frozenset(s) for t, s in segments.items()},
        histories=histories,
        restore_points=load_restore_points(storage, cluster),
        partials=frozenset(partials),
        unfinished=unfinished,
    )


_SUFFIXES = sorted(all_suffixes(), key=len, reverse=True)


def stored_name(base: str) -> str | None:
    """The WAL file name an archived object's base name stores (``X.zst.age`` -> ``X``), or None."""
    for suffix in _SUFFIXES:
        if suffix and base.endswith(suffix):
            return base[: -len(suffix)]
    return base if "." not in base else None


def _read_history(
    storage: Storage, cluster: str, name: str, identities: Callable[[], list[str]] | None
) -> list[wal.HistoryEntry]:
    hint = "run 'pgvault verify --all' for a full report"
    try:
        meta = read_record(storage, cluster, name)
    except IntegrityError as e:
        raise IntegrityError(f"archived timeline history {name} is unreadable: {e.message}", hint=hint) from None
    if meta is None:  # deleted since the listing
        raise IntegrityError(f"archived timeline history {name} lost its checksum record", hint=hint)
    try:
        if meta.history is not None:
            return wal.parse_history(meta.history)
        spec = meta.pipeline
        if spec.encryption != "none" and identities is None:
            raise IntegrityError(f"{name} is encrypted and its checksum record carries no copy of the history")
        from pgvault.pipeline import read_stream  # the streams: not for wal fetch's look for later WAL

        out = io.BytesIO()
        with storage.open_read(meta.key) as src:
            read_stream(src, out, spec, identities=identities() if spec.encryption != "none" and identities else [],
                        expected=meta.checksums)
        return wal.parse_history(out.getvalue().decode())
    except ObjectNotFound:
        raise IntegrityError(f"archived timeline history {name} lost its object") from None
    except (wal.WalError, ValueError) as e:
        raise IntegrityError(f"archived timeline history {name} is unreadable: {type(e).__name__}: {e}",
                             hint=hint) from None


def restore_point_key(cluster: str, name: str) -> str:
    return f"{cluster}/restore-points/{layout.encode_name(name)}.json"


def load_restore_points(storage: Storage, cluster: str) -> dict[str, RestorePoint]:
    points: dict[str, RestorePoint] = {}
    for info in storage.list(f"{cluster}/restore-points/"):
        try:
            p = RestorePoint.from_json(json.loads(storage.read_bytes(info.key)))
        except ObjectNotFound:
            continue
        except (ValueError, KeyError, TypeError):
            raise IntegrityError(f"restore point record {info.key} is unreadable") from None
        points[p.name] = p
    return points


def wait_until_archived(storage: Storage, cluster: str, names: list[str], timeout: float, *, what: str,
                        hint: str | None = None) -> None:
    """Block until every file in ``names`` is in this repository (its checksum record exists);
    ``hint``: what to do when they do not come in time (default: check archive_command)."""
    deadline = time.monotonic() + timeout
    missing = list(names)
    # The last segment is usually archived a fraction of a second after the backup stopped: look
    # again soon, then less and less often (a fixed 0.5 s wasted 0.25 s per backup on average).
    pause = 0.02
    while missing:
        still = []
        for name in missing:
            try:
                storage.stat(layout.wal_meta(cluster, name))
            except ObjectNotFound:
                still.append(name)
        missing = still
        if missing:
            if time.monotonic() > deadline:
                raise PgvaultError(
                    f"WAL {missing[0]}{' .. ' + missing[-1] if len(missing) > 1 else ''} needed by {what} "
                    f"did not reach {storage.url} within {timeout:.0f}s",
                    hint=hint or "is archive_command = 'pgvault wal push %p' set, with the same repository and cluster?",
                )
            time.sleep(pause)
            pause = min(pause * 2, 0.5)
