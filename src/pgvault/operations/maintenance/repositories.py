"""Every configured repository at a glance (``status``, ``metrics``): the newest backup and WAL
file each holds for the cluster, how far each copy is behind the first, and each copy's last
``repo sync`` run.  Each repository is read in its own thread within a time limit, so a region
that is down is reported as unreachable in seconds while the others are still read.

The comparison itself is pure: :func:`pgvault.policy.sync.lag_behind`."""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

from pgvault import log
from pgvault.config import Settings
from pgvault.errors import PgvaultError
from pgvault.operations.context import build_context
from pgvault.policy.sync import Lag, RepositoryPosition, lag_behind
from pgvault.repository.archive_scan import load_archive_index
from pgvault.repository.catalog import logical_ids, physical_ids
from pgvault.repository.cluster import read_cluster_info
from pgvault.repository.sync_records import newest_sync_record
from pgvault.repository.wal_record import archived_at
from pgvault.storage.base import place


def _position(settings: Settings, name: str) -> tuple[RepositoryPosition, int | None, tuple[str, str]]:
    s = settings.with_repository(name)
    storage = build_context(s).storage
    cluster = s.cluster
    info = read_cluster_info(storage, cluster)
    seg_size = info.wal_segment_size if info else None
    newest = None
    segments = 0
    if seg_size:
        index = load_archive_index(storage, cluster, seg_size)
        names = index.names()
        segments = len(names)
        newest = names[-1] if names else None
    logical, physical = logical_ids(storage, cluster), physical_ids(storage, cluster)
    return RepositoryPosition(
        name=name, url=storage.url, newest_wal=newest,
        newest_wal_archived_at=archived_at(storage, cluster, newest) if newest else None,
        newest_logical=logical[-1] if logical else None, newest_physical=physical[-1] if physical else None,
        segments=segments, last_sync=newest_sync_record(storage, cluster) if name != settings.all_repositories()[0].name
        else None,
    ), seg_size, place(storage)


def survey(settings: Settings, *, timeout: float = 15.0) -> list[tuple[RepositoryPosition, Lag | None]]:
    """Every configured repository's position and its lag behind the first (None for the first,
    and when either cannot be read)."""
    repos = settings.all_repositories()
    results: dict[str, Any] = {}

    def read(name: str) -> None:
        try:
            results[name] = _position(settings, name)
        except PgvaultError as e:
            results[name] = e.message
        except Exception as e:  # noqa: BLE001 - one repository's failure must not hide the others
            results[name] = f"{type(e).__name__}: {e}"

    threads = [threading.Thread(target=read, args=(r.name,), name=f"survey-{r.name}", daemon=True) for r in repos]
    for t in threads:
        t.start()
    deadline = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=timeout)
    for t in threads:
        t.join(max(0.0, (deadline - dt.datetime.now(dt.UTC)).total_seconds()))
    positions: list[RepositoryPosition] = []
    seg_size: int | None = None
    places: dict[tuple[str, str], str] = {}
    for r in repos:
        got = results.get(r.name, f"did not answer within {timeout:g}s")
        if isinstance(got, str):
            positions.append(RepositoryPosition(r.name, r.url, error=log.redact(got)))
        elif got[2] in places:
            # Another name for a repository listed already: "in step" with it would claim a copy
            # (a second region) that does not exist.
            positions.append(RepositoryPosition(r.name, r.url, error=f"the same place as repository "
                                                f"{places[got[2]]!r} ({got[0].url}): not a copy"))
        else:
            places[got[2]] = r.name
            positions.append(got[0])
            seg_size = seg_size or got[1]
    first = positions[0]
    return [(p, None if i == 0 else lag_behind(first, p, seg_size)) for i, p in enumerate(positions)]


def survey_json(rows: list[tuple[RepositoryPosition, Lag | None]]) -> list[dict[str, Any]]:
    return [{**p.to_json(), "lag": lag.to_json() if lag else None, "first": i == 0} for i, (p, lag) in enumerate(rows)]
