"""Job notifications (pure): whether a finished scheduled job is notified, and what is sent.

:func:`event_for` decides from this run's outcome and the job's previous outcome (its job record
before this run): a failure is ``failure``; a success after a failure is ``recovery`` (the
"resolved" on-call waits for); any other success is ``success``.  The configured ``notify.events``
list filters those; a recovery is still announced as a ``success`` when only successes are
wanted, because it is one.  :func:`job_payload` is the generic webhook's JSON document (the
fields are documented in docs/notifications.md) and :func:`slack_payload` the Slack incoming
webhook's message made from it.  Sending is I/O and lives in :mod:`pgvault.operations.notify`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from pgvault.policy.retention import fmt_duration

if TYPE_CHECKING:
    from pgvault.repository.jobs import JobRecord, JobRun

FAILURE, SUCCESS, RECOVERY, TEST = "failure", "success", "recovery", "test"
PAYLOAD_FORMAT = 1
PAYLOAD_KIND = "job_notification"


def event_for(ok: bool, previous: JobRecord | None, on: Collection[str]) -> str | None:
    """The event to notify for a run that ended ``ok`` (or not), or None when ``on`` wants none.

    ``previous`` is the job's record before this run (None: first run, or unknown); only its
    last status counts, so a success after a run of failures is one recovery, and the next
    success is an ordinary success again."""
    if not ok:
        return FAILURE if FAILURE in on else None
    if previous is not None and not previous.ok and RECOVERY in on:
        return RECOVERY
    return SUCCESS if SUCCESS in on else None


def previous_outcome(stored: JobRecord | None, local: JobRecord | None) -> JobRecord | None:
    """The job's outcome before this run: the repository's record (``stored``), unless this
    host's metrics textfile (``local``) knows of a later failure the repository missed — it could
    not be written, typically because it was the repository that was down.  Without a textfile a
    failure the repository missed is still notified, but its recovery is announced as a success."""
    if local is None or local.ok or not local.last_failure_at:
        return stored
    if stored is None or _instant(local.last_failure_at) > _instant(stored.last_finished_at):
        return local
    return stored


def _instant(iso: str | None) -> dt.datetime:
    try:
        t = dt.datetime.fromisoformat(iso or "")
    except ValueError:
        return dt.datetime.min.replace(tzinfo=dt.UTC)
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def wanted(job: str, jobs: Collection[str]) -> bool:
    """``notify.jobs`` filters by job name; empty means every scheduled job."""
    return not jobs or job in jobs


def job_payload(cluster: str, run: JobRun, event: str, *, previous: JobRecord | None = None) -> dict[str, Any]:
    """The generic webhook's document (docs/notifications.md lists every field).

    ``backup_id`` is what the command put in its job details (``backup``, ``basebackup``: the
    backup made; ``drill``, ``verify ID``: the backup checked); a failed backup has none."""
    backup_id = run.details.get("backup_id")
    return {
        "format": PAYLOAD_FORMAT,
        "kind": PAYLOAD_KIND,
        "event": event,
        "cluster": cluster,
        "job": run.job,
        "status": "succeeded" if run.ok else "failed",
        "exit_code": run.exit_code,
        "error_kind": run.error_kind,
        "error": run.error,
        "backup_id": backup_id if isinstance(backup_id, str) else None,
        "host": run.host,
        "started_at": run.started_at.isoformat(),
        "finished_at": run.finished_at.isoformat(),
        "duration_seconds": round(run.duration_seconds, 3),
        "previous_status": None if previous is None else ("succeeded" if previous.ok else "failed"),
        "last_failure_at": None if previous is None else previous.last_failure_at,
        "details": dict(run.details),
        "pgvault_version": run.pgvault_version,
    }


def _escape(text: str) -> str:
    """Slack's message text treats & < > as control characters (links, mentions)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_ERROR_SHOWN = 300  # characters of the error in the Slack line (the generic payload has it whole)


def slack_text(doc: dict[str, Any]) -> str:
    """One line for people, e.g. ``pgvault backup FAILED on cluster main (host db1) after 12s:
    could not connect ...``."""
    where = f"on cluster {doc['cluster']} (host {doc['host'] or '?'})"
    took = fmt_duration(float(doc["duration_seconds"]))
    backup = f"; backup {doc['backup_id']}" if doc.get("backup_id") else ""
    event = doc["event"]
    if event == TEST:
        return _escape(f"pgvault test notification {where}: this webhook works")
    if event == FAILURE:
        error = str(doc.get("error") or f"exit code {doc['exit_code']}")
        if len(error) > _ERROR_SHOWN:
            error = error[: _ERROR_SHOWN - 3] + "..."
        return _escape(f"pgvault {doc['job']} FAILED {where} after {took} (exit code {doc['exit_code']}): {error}")
    if event == RECOVERY:
        since = f" (last failure {doc['last_failure_at']})" if doc.get("last_failure_at") else ""
        return _escape(f"pgvault {doc['job']} RECOVERED {where}: succeeded in {took} after failing{since}{backup}")
    return _escape(f"pgvault {doc['job']} succeeded {where} in {took}{backup}")


_ICON = {FAILURE: ":red_circle:", RECOVERY: ":large_green_circle:", SUCCESS: ":white_check_mark:",
         TEST: ":information_source:"}
_COLOR = {FAILURE: "danger", RECOVERY: "good", SUCCESS: "good", TEST: "#439FE0"}


def slack_payload(doc: dict[str, Any]) -> dict[str, Any]:
    """A Slack incoming-webhook message: ``text`` (also what notifications show) plus one
    attachment with the facts as fields, coloured by event."""
    fields = [("Cluster", doc["cluster"]), ("Job", doc["job"]), ("Host", doc["host"] or "?"),
              ("Exit code", str(doc["exit_code"]))]
    if doc.get("backup_id"):
        fields.append(("Backup", doc["backup_id"]))
    fields.append(("Finished", doc["finished_at"]))
    return {
        "text": f"{_ICON.get(doc['event'], '')} {slack_text(doc)}".strip(),
        "attachments": [{
            "color": _COLOR.get(doc["event"], "#999999"),
            "fields": [{"title": t, "value": _escape(str(v)), "short": True} for t, v in fields],
            "footer": f"pgvault {doc['pgvault_version']}",
        }],
    }
