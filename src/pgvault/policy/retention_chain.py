"""Retention of incremental chains, purely: a kept base backup keeps every backup it is restored from.

An ``incr`` or ``diff`` is useless without its reference and the reference's own chain
(:mod:`pgvault.policy.chain`).  So after the rules of :mod:`pgvault.policy.retention` (and Object
Lock holds) decide, each kept incremental keeps its reference, with the reason "needed by <id>
(incr|diff)", even when the rules, ``keep_last`` or ``min_keep`` would delete it; the reference,
now kept, keeps its own, and so on down to the full backup.  A ``diff`` references its full
backup directly, so the incrementals taken between them are not kept on its account.

A backup whose chain is broken (a link missing, unreadable or replaced) is still planned by the
rules as before, and the plan says so in a note: expire neither rescues nor hurries it (``verify``
fails it, restore refuses it).  Its links that do exist are kept like any other chain's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pgvault.policy.chain import broken

if TYPE_CHECKING:
    from pgvault.policy.retention import Backup, Decision


@dataclass(frozen=True)
class _Link:
    """A retention record as :func:`pgvault.policy.chain.chain_of` reads a manifest."""

    backup_id: str
    backup_type: str
    reference: str | None
    reference_start_lsn: str
    start_lsn: str


def needed_by(backup_id: str, backup_type: str) -> str:
    """The reason a backup is kept for one that is restored from it."""
    return f"needed by {backup_id} ({backup_type})"


def broken_chains(backups: Sequence[Backup]) -> dict[str, str]:
    """backup id -> why its chain cannot be followed to its full backup (readable backups only)."""
    links = {b.backup_id: _Link(b.backup_id, b.backup_type, b.reference, b.reference_start_lsn, str(b.start_lsn or ""))
             for b in backups if b.unreadable is None}
    return broken(links, {b.backup_id: b.unreadable for b in backups if b.unreadable is not None})


def keep_chains(decisions: Sequence[Decision], backups: Sequence[Backup]) -> tuple[list[Decision], list[str]]:
    """``decisions`` with every link of a kept backup's chain kept and saying for whom; plus a
    note for each backup whose chain is broken.  Order is preserved."""
    by_id = {b.backup_id: b for b in backups}
    reasons = {d.backup_id: list(d.reasons) if d.keep else [] for d in decisions}
    # A reference is always older than what references it, so walking the kept backups newest
    # first reaches every dependent before its reference; the worklist makes that order moot.
    todo = sorted((d.backup_id for d in decisions if d.keep), key=lambda i: by_id[i].order, reverse=True)
    seen = set(todo)
    while todo:
        b = by_id.get(todo.pop(0))
        if b is None or b.unreadable is not None or b.backup_type == "full" or not b.reference:
            continue
        ref = b.reference
        if ref not in reasons:
            continue  # a missing link: the note below says so
        reasons[ref].append(needed_by(b.backup_id, b.backup_type))
        if ref not in seen:
            seen.add(ref)
            todo.append(ref)
    unrestorable = broken_chains(backups)
    out = []
    notes = []
    for d in decisions:
        if not d.keep and reasons[d.backup_id]:
            d = dataclasses.replace(d, keep=True, reasons=tuple(reasons[d.backup_id]))
        elif d.keep and len(reasons[d.backup_id]) != len(d.reasons):
            d = dataclasses.replace(d, reasons=tuple(reasons[d.backup_id]))
        why = unrestorable.get(d.backup_id)
        if why is not None:
            b = by_id[d.backup_id]
            d = dataclasses.replace(d, detail="; ".join(x for x in (d.detail, f"chain broken: {why}") if x))
            notes.append(f"base backup {d.backup_id} ({b.backup_type}) cannot be restored: {why}; it is "
                         f"{'kept' if d.keep else 'deleted'} as the rules say ('pgvault verify' fails it)")
        out.append(d)
    return out, notes
