"""One writer per cluster per operation, enforced in the repository itself.

The lock is an object created with ``put_if_absent`` (atomic on a local filesystem and on S3 with
``If-None-Match``), so two hosts sharing a repository exclude each other too.  It carries the
owner's host and pid and a heartbeat: a lock whose owner process is gone (same host) or whose
heartbeat is older than its TTL (another host, e.g. a killed Kubernetes pod) is stale and is taken
over, so a killed run never blocks the next one.

Taking over must itself be exclusive: "read the stale lock, delete it, create ours" lets two
processes that both saw the same stale lock both succeed (the second deletes the first one's new
lock). Storage has no conditional delete, so the right to delete a given stale lock is claimed
first with ``put_if_absent`` on a marker named after that lock's token: exactly one process gets
it, re-reads the lock, and deletes it only if it still carries that token.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import threading
from types import TracebackType
from typing import Any

from pgvault import log
from pgvault.errors import LockedError
from pgvault.procs import hostname, pid_alive, random_id
from pgvault.repository import layout
from pgvault.storage import ObjectExists, ObjectNotFound, Storage

HEARTBEAT_SECONDS = 30.0
TTL_SECONDS = 180.0
# A takeover is three storage calls; a marker older than this belongs to a process that died in
# the middle of one, and the next generation of the marker may be claimed.
TAKEOVER_TTL_SECONDS = 60.0


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class RepositoryLock:
    """Context manager holding ``<cluster>/locks/<operation>.lock`` while the body runs."""

    def __init__(self, storage: Storage, cluster: str, operation: str) -> None:
        self.storage = storage
        self.key = layout.lock_key(cluster, operation)
        self.operation = operation
        self.cluster = cluster
        self.token = random_id()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _body(self, ttl: float = TTL_SECONDS) -> bytes:
        doc = {
            "host": hostname(),
            "pid": os.getpid(),
            "token": self.token,
            "operation": self.operation,
            "heartbeat_at": _now().isoformat(),
            "ttl_seconds": ttl,
        }
        return json.dumps(doc).encode()

    def _stale_reason(self, doc: object) -> str | None:
        return stale_reason(doc)

    def acquire(self) -> None:
        """Take the lock or raise :class:`LockedError` naming the holder."""
        for _ in range(3):
            try:
                self.storage.put_if_absent(self.key, self._body())
                break
            except ObjectExists:
                try:
                    raw = self.storage.read_bytes(self.key)
                except ObjectNotFound:
                    continue  # released between our two calls: try again
                doc = _parse(raw)
                reason = self._stale_reason(doc)
                if reason is None:
                    raise LockedError(
                        f"another pgvault {self.operation} of cluster {self.cluster!r} is running "
                        f"(host {doc.get('host')}, pid {doc.get('pid')}, since heartbeat {doc.get('heartbeat_at')})",
                        hint="wait for it to finish; a killed run's lock expires by itself",
                    ) from None
                self._take_over(raw, reason)
        else:
            raise LockedError(f"could not take the {self.operation} lock of cluster {self.cluster!r}")
        self._beat = threading.Thread(target=self._heartbeat, name="lock-heartbeat", daemon=True)
        self._beat.start()

    def _take_over(self, stale: bytes, reason: str) -> None:
        """Delete the stale lock ``stale`` (its exact bytes as read) if this process wins the right to.

        Raises :class:`LockedError` when another process is taking over the same lock."""
        tag = _tag(stale)
        generation = 1
        while True:
            marker = f"{self.key}.takeover-{tag}-{generation}"
            try:
                self.storage.put_if_absent(marker, self._body(ttl=TAKEOVER_TTL_SECONDS))
                break
            except ObjectExists:
                try:
                    holder = _parse(self.storage.read_bytes(marker))
                except ObjectNotFound:
                    continue  # cleaned up by a finished takeover: claim it (the re-read below is what counts)
                if stale_reason(holder) is None:
                    raise LockedError(
                        f"another pgvault is taking over the stale {self.operation} lock of cluster {self.cluster!r}",
                        hint="run again in a moment",
                    ) from None
                generation += 1  # its claimer died mid-takeover: the next generation is free to claim
        try:
            try:
                current = self.storage.read_bytes(self.key)
            except ObjectNotFound:
                return  # released meanwhile
            # Only the lock we judged stale may go (same holder, and not refreshed meanwhile).
            if _tag(current) == tag and stale_reason(_parse(current)) is not None:
                log.get().warning("taking over stale %s lock of cluster %r: %s", self.operation, self.cluster, reason)
                self.storage.delete(self.key)
        finally:
            for g in range(1, generation + 1):
                try:
                    self.storage.delete(f"{self.key}.takeover-{tag}-{g}")
                except Exception:  # noqa: BLE001 - a leftover marker only names a lock that is gone
                    pass

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                # Never refresh a lock that someone else has taken over in the meantime.
                if json.loads(self.storage.read_bytes(self.key)).get("token") != self.token:
                    return
                with self.storage.open_write(self.key) as w:
                    w.write(self._body())
            except Exception:  # noqa: BLE001 - a missed heartbeat only shortens the lease
                pass

    def release(self) -> None:
        """Drop the lock if we still hold it."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        try:
            doc = json.loads(self.storage.read_bytes(self.key))
            if doc.get("token") == self.token:
                self.storage.delete(self.key)
        except (ObjectNotFound, ValueError):
            pass

    def __enter__(self) -> RepositoryLock:
        self.acquire()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def _parse(raw: bytes) -> dict[str, Any]:
    """A lock document; ``{}`` if damaged (which :func:`stale_reason` calls stale)."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _tag(raw: bytes) -> str:
    """Names one lock holder: its token, or a digest of the bytes for a damaged lock."""
    token = _parse(raw).get("token")
    if isinstance(token, str) and token.isalnum():
        return token
    return hashlib.sha256(raw).hexdigest()[:32]


def stale_reason(doc: object, *, now: dt.datetime | None = None) -> str | None:
    """Why a lock document no longer holds (its owner is gone, no heartbeat), or None if it is live.

    A lock someone damaged by hand must not wedge every future backup: unreadable = stale."""
    if not isinstance(doc, dict):
        return "unreadable lock"
    try:
        beat = dt.datetime.fromisoformat(str(doc["heartbeat_at"]))
        if beat.tzinfo is None:
            beat = beat.replace(tzinfo=dt.UTC)
        ttl = float(doc.get("ttl_seconds", TTL_SECONDS))
        pid = int(doc.get("pid", 0))
    except (KeyError, ValueError, TypeError):
        return "unreadable lock"
    if doc.get("host") == hostname() and pid > 0 and not pid_alive(pid):
        return f"owner process {pid} is gone"
    if ((now or _now()) - beat).total_seconds() > ttl:
        return f"no heartbeat since {beat.isoformat()}"
    return None
