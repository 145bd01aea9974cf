"""Incremental chains and file lists in ``verify`` (:mod:`pgvault.operations.maintenance.verify`).

An ``incr`` or ``diff`` base backup is restored from every backup up its chain
(:mod:`pgvault.policy.chain`), so verifying it verifies them too: :class:`Chains` reads each
manifest once (also when ``--all`` or several backups share links), :meth:`Chains.links` names
the backups to verify, and :meth:`Chains.finding` judges the chain: broken (a link missing,
unreadable or not the backup the incremental was taken against: what restore refuses) or
holding a link whose own items failed is a failure of the incremental itself, so that its line
in the report says why it cannot be restored.

A backup's file list (``files.json.zst``) is checked like its tars (stored size and sha256 from
the manifest, zstd integrity) and must parse: the next incremental and ``restore-cluster --delta``
read it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from pgvault.errors import IntegrityError, NotFoundError
from pgvault.policy.chain import ChainBroken, chain_of
from pgvault.policy.wal_check import FAILED, OK, Finding
from pgvault.repository import catalog, file_list, layout
from pgvault.repository.physical import PhysicalManifest
from pgvault.storage import Storage

# ObjectChecker.check: (key, spec, expected, keep=...) -> (status, problem, raw bytes when kept)
Check = Callable[..., tuple[str, str, bytes | None]]


@dataclass
class Chains:
    """The base backups' manifests read so far, and the ones that could not be read."""

    storage: Storage
    cluster: str
    add: Callable[[Finding], None]  # reports an unreadable manifest, once
    manifests: dict[str, PhysicalManifest] = field(default_factory=dict)
    damaged: dict[str, str] = field(default_factory=dict)  # id -> why its manifest cannot be read
    missing: set[str] = field(default_factory=set)

    def load(self, backup_id: str, *, asked: bool = False) -> PhysicalManifest | None:
        """The manifest of ``backup_id``; None when it is damaged (a failure is reported) or, for a
        link up a chain, not there.  A backup that was ``asked`` for and vanished is NotFoundError."""
        if backup_id in self.manifests or backup_id in self.damaged or backup_id in self.missing:
            return self.manifests.get(backup_id)
        try:
            m = catalog.load_physical(self.storage, self.cluster, backup_id)
        except NotFoundError:
            if asked:
                raise
            self.missing.add(backup_id)
            return None
        except IntegrityError as e:
            self.damaged[backup_id] = e.message
            key = layout.base_prefix(self.cluster, backup_id) + layout.MANIFEST_NAME
            self.add(Finding("physical", layout.MANIFEST_NAME, FAILED, e.message, backup_id, key))
            return None
        self.manifests[backup_id] = m
        return m

    def links(self, m: PhysicalManifest) -> list[PhysicalManifest]:
        """``m`` and the backups it is restored from whose manifests read, full backup first (up
        to a missing or damaged link, which :meth:`finding` reports)."""
        out = [m]
        while out[-1].is_incremental and out[-1].reference and all(x.backup_id != out[-1].reference for x in out):
            ref = self.load(str(out[-1].reference))
            if ref is None:
                break
            out.append(ref)
        return out[::-1]

    def chain(self, m: PhysicalManifest) -> tuple[list[str], str | None]:
        """The ids a restore of ``m`` applies, full first, or ``([], why not)`` (``show`` prints it)."""
        self.manifests.setdefault(m.backup_id, m)
        self.links(m)
        try:
            return chain_of(m.backup_id, self.manifests, self.damaged), None
        except ChainBroken as e:
            return [], e.reason

    def finding(self, m: PhysicalManifest, failed: Collection[str]) -> Finding | None:
        """The chain of incremental ``m`` (after its links were verified; ``failed``: the ids with a
        failed item), or None for a full backup."""
        if not m.is_incremental:
            return None
        subject = f"{m.backup_type} of {m.reference}"
        ids, why = self.chain(m)
        if why is not None:
            return Finding("chain", subject, FAILED, f"broken: {why}; restore refuses it", m.backup_id)
        links = ", ".join(f"{i} ({self.manifests[i].backup_type})" for i in ids)
        bad = [i for i in ids[:-1] if i in failed]
        if bad:
            return Finding("chain", subject, FAILED, f"base backup {bad[0]}, which it is restored from, failed "
                                                     f"verification (see its items); chain: {links}", m.backup_id)
        return Finding("chain", subject, OK, f"{len(ids)} backups, each verified: {links}", m.backup_id)


def check_file_list(check: Check, prefix: str, m: PhysicalManifest) -> Finding | None:
    """The file list of ``m`` (None when its manifest records none): stored bytes, zstd, format."""
    if m.files is None:
        return None
    key = prefix + m.files.key
    status, problem, raw = check(key, file_list.FILES_SPEC, m.files.result, keep=True)
    if status == OK and raw is not None:
        try:
            problem = f"{len(file_list.loads(raw, where=key))} files listed"
        except IntegrityError as e:
            status, problem = FAILED, e.message
    return Finding("physical", m.files.key, status, problem, m.backup_id, key)
