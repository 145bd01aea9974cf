"""Incremental chains of base backups (pure): which backups a restore of one needs, and which
backup a new incremental or differential takes its pages from.

A full backup stands alone.  An ``incr`` holds the pages changed since its reference (the newest
backup of its chain when it was taken), a ``diff`` those changed since the newest full; either
needs its reference, and the reference's own chain, to be restored.  A chain is only as good as
its weakest link: a missing or unreadable manifest anywhere up the chain makes every backup
below it unrestorable, and the reason says which link is missing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol


class Link(Protocol):
    """What chains need of a physical manifest."""

    @property
    def backup_id(self) -> str: ...
    @property
    def backup_type(self) -> str: ...
    @property
    def reference(self) -> str | None: ...
    @property
    def reference_start_lsn(self) -> str: ...
    @property
    def start_lsn(self) -> str: ...


class ChainBroken(Exception):
    """A backup's chain cannot be followed to its full backup."""

    def __init__(self, backup_id: str, reason: str) -> None:
        super().__init__(f"base backup {backup_id} cannot be restored: {reason}")
        self.backup_id = backup_id
        self.reason = reason


def chain_of(backup_id: str, backups: Mapping[str, Link], damaged: Mapping[str, str] | None = None) -> list[str]:
    """The ids a restore of ``backup_id`` applies, full backup first; :class:`ChainBroken` naming
    the missing or damaged link (``damaged``: id -> why its manifest cannot be read)."""
    damaged = damaged or {}
    out: list[str] = []
    current: str | None = backup_id
    child: Link | None = None
    while current is not None:
        if current in out:
            raise ChainBroken(backup_id, f"its chain loops at {current}")
        link = backups.get(current)
        if link is None:
            why = damaged.get(current)
            what = f"its manifest is damaged ({why})" if why else "it is not in the repository"
            raise ChainBroken(backup_id, f"it needs base backup {current}, and {what}"
                              if current != backup_id else f"{what}")
        if child is not None and child.reference_start_lsn and child.reference_start_lsn != link.start_lsn:
            raise ChainBroken(backup_id, f"{child.backup_id} was taken against a backup {current} that started at "
                                         f"{child.reference_start_lsn}, but {current} in the repository started at "
                                         f"{link.start_lsn}")
        out.append(current)
        child = link
        current = link.reference if link.backup_type != "full" else None
    return out[::-1]


@dataclass(frozen=True)
class ReferenceChoice:
    """The backup a new incremental/differential takes its pages from, or why it must be full."""

    reference: str | None
    reason: str  # why this reference, or why a full backup is taken instead


def choose_reference(kind: str, newest_first: Sequence[Link], backups: Mapping[str, Link],
                     damaged: Mapping[str, str] | None = None) -> ReferenceChoice:
    """``incr``: the newest backup whose chain is whole; ``diff``: the newest full.  ``newest_first``
    lists the candidates (same cluster, same system identifier), newest first.  The server-side
    checks (timeline, checksums, WAL continuity, ...) come after this choice."""
    if kind == "full":
        return ReferenceChoice(None, "a full backup was asked for")
    for b in newest_first:
        if kind == "diff" and b.backup_type != "full":
            continue
        try:
            chain_of(b.backup_id, backups, damaged)
        except ChainBroken as e:
            return ReferenceChoice(None, f"the newest candidate {b.backup_id} is unusable ({e.reason}): a full backup "
                                         "is taken instead")
        return ReferenceChoice(b.backup_id, f"{kind} against {b.backup_id} ({b.backup_type})")
    what = "full backup" if kind == "diff" else "base backup"
    article = "an" if kind == "incr" else "a"
    return ReferenceChoice(None, f"there is no {what} to take {article} {kind} against: a full backup is taken instead")


def dependents(backups: Mapping[str, Link]) -> dict[str, list[str]]:
    """For each backup id, the backups that reference it directly."""
    out: dict[str, list[str]] = {}
    for b in backups.values():
        if b.backup_type != "full" and b.reference:
            out.setdefault(b.reference, []).append(b.backup_id)
    return {k: sorted(v) for k, v in out.items()}


def broken(backups: Mapping[str, Link], damaged: Mapping[str, str] | None = None) -> dict[str, str]:
    """backup id -> why :func:`chain_of` cannot follow it to its full backup, for every
    incremental in ``backups`` whose chain is broken (``expire``'s notes, ``status``'s finding)."""
    out = {}
    for backup_id, link in backups.items():
        if link.backup_type == "full":
            continue
        try:
            chain_of(backup_id, backups, damaged)
        except ChainBroken as e:
            out[backup_id] = e.reason
    return out
