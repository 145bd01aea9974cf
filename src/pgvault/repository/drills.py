"""Drill reports: ``<cluster>/drills/<YYYY>/<MM>/<drill-id>.json``, written by ``pgvault drill``.

A report is the evidence that a backup restores: what was restored, each check with its result
and time, the measured restore (recovery) time and the total.  ``status`` and ``metrics`` read the
newest ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pgvault.errors import IntegrityError
from pgvault.repository import layout
from pgvault.storage import ObjectNotFound, Storage

REPORT_FORMAT = 1


@dataclass(frozen=True)
class Check:
    """One check of a drill: ``ok`` with a human ``detail`` (expected vs found)."""

    name: str
    ok: bool
    seconds: float
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "seconds": round(self.seconds, 3), "detail": self.detail}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Check:
        return cls(str(d["name"]), bool(d["ok"]), float(d.get("seconds", 0.0)), str(d.get("detail", "")))


@dataclass(frozen=True)
class DrillReport:
    drill_id: str
    cluster: str
    backup_kind: str  # logical | physical
    backup_id: str
    started_at: str
    finished_at: str
    ok: bool
    restore_seconds: float | None  # the measured recovery time; None if the restore itself failed
    total_seconds: float
    checks: tuple[Check, ...] = ()
    target: dict[str, Any] = field(default_factory=dict)  # where it was restored (kind, version, target)
    rto_seconds: float | None = None
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "format": REPORT_FORMAT, "kind": "drill", "drill_id": self.drill_id, "cluster": self.cluster,
            "backup_kind": self.backup_kind, "backup_id": self.backup_id, "started_at": self.started_at,
            "finished_at": self.finished_at, "ok": self.ok,
            "restore_seconds": None if self.restore_seconds is None else round(self.restore_seconds, 3),
            "total_seconds": round(self.total_seconds, 3), "rto_seconds": self.rto_seconds,
            "checks": [c.to_json() for c in self.checks], "target": self.target, "error": self.error,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any], *, where: str = "drill report") -> DrillReport:
        try:
            if d.get("format") != REPORT_FORMAT or d.get("kind") != "drill":
                raise IntegrityError(f"{where} is not a format-{REPORT_FORMAT} drill report")
            return cls(
                drill_id=d["drill_id"], cluster=d["cluster"], backup_kind=d["backup_kind"], backup_id=d["backup_id"],
                started_at=d["started_at"], finished_at=d["finished_at"], ok=bool(d["ok"]),
                restore_seconds=None if d.get("restore_seconds") is None else float(d["restore_seconds"]),
                total_seconds=float(d["total_seconds"]), checks=tuple(Check.from_json(c) for c in d.get("checks", [])),
                target=dict(d.get("target") or {}), rto_seconds=d.get("rto_seconds"), error=str(d.get("error", "")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise IntegrityError(f"{where} is unreadable: {type(e).__name__}: {e}") from None


def drill_key(cluster: str, drill_id: str) -> str:
    t = layout.parse_backup_id(drill_id)
    return f"{cluster}/drills/{t:%Y}/{t:%m}/{drill_id}.json"


def save_drill(storage: Storage, report: DrillReport) -> str:
    key = drill_key(report.cluster, report.drill_id)
    with storage.open_write(key) as w:
        w.write((json.dumps(report.to_json(), indent=2) + "\n").encode())
    return key


def list_drills(storage: Storage, cluster: str) -> list[DrillReport]:
    """Every drill report of ``cluster``, oldest first."""
    out = []
    for info in storage.list(f"{cluster}/drills/"):
        name = info.key.rsplit("/", 1)[-1]
        if not name.endswith(".json") or not layout.is_backup_id(name[: -len(".json")]):
            continue
        try:
            out.append(DrillReport.from_json(json.loads(storage.read_bytes(info.key)), where=info.key))
        except ObjectNotFound:
            continue
        except ValueError:
            raise IntegrityError(f"drill report {info.key} is not valid JSON") from None
    return sorted(out, key=lambda r: (r.drill_id.split("-")[0], int(r.drill_id.partition("-")[2] or 0)))
