"""S3 Object Lock, purely: which mode and retain-until date pgvault puts on every object it writes.

``repository.s3.object_lock`` is ``off`` (default), ``governance`` or ``compliance``;
``repository.s3.object_lock_retention`` is a duration (``30d``) or ``retention``: "until the
retention policy would expire the object". No I/O here (design rule 5): the storage layer stamps
the date on each put; expire asks the store for each object's actual date before deleting.

How ``retention`` is computed (:func:`policy_horizon`): the longest time a *time-based* rule of
``retention.*`` keeps a backup after it was taken, plus one day of margin:

* ``keep_within`` (logical and physical): the duration itself;
* ``daily N`` / ``weekly N`` / ``monthly N`` / ``yearly N``: N days / N weeks / N·31 days /
  N·366 days — the newest backup of the N-th bucket back can be at most that old when it leaves;
* ``pitr_window W``: W — a base backup is kept while it ended inside the window, and the anchor
  before it only until the next backup ends more than W ago.

WAL is written after the base backup that needs it started, so a WAL file gets a date at least as
late as the date the oldest backup that needs it would get: it is protected as long as that backup.
Count rules (``keep_last``, ``min_keep``) and the PITR anchor keep a backup for as long as backups
keep coming at their schedule; no date is known for them here. Such a backup is deletable (not
locked) after the horizon until the rule releases it. That is the documented gap of ``retention``:
set an explicit duration of horizon + your backup interval to close it. Never unsafe the other way:
a date later than the policy's only makes ``expire`` report the object as retained and delete it on
a later run.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from pgvault.policy.retention import Policy, fmt_duration

MODES = ("off", "governance", "compliance")
POLICY_RETENTION = "retention"
DAY = 86400.0
MARGIN = DAY  # expire runs at most daily in the documented schedules: one run of slack


@dataclass(frozen=True)
class LockRule:
    """What every put carries: S3 mode name and how long from the moment of the put."""

    mode: str  # "GOVERNANCE" | "COMPLIANCE"
    seconds: float
    source: str  # how the duration was chosen, for status: "30d" | "retention policy: 15d (+1d margin)"

    def retain_until(self, now: dt.datetime) -> dt.datetime:
        """The retain-until date of an object put at ``now`` (whole seconds, rounded up: S3 keeps seconds)."""
        t = now.astimezone(dt.UTC) + dt.timedelta(seconds=self.seconds)
        return t.replace(microsecond=0) + dt.timedelta(seconds=1 if t.microsecond else 0)

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode.lower(), "retention_seconds": self.seconds, "retention": self.source}


def policy_horizon(policy: Policy) -> float | None:
    """The longest time a time-based rule keeps a backup after it was taken (seconds), or None when
    no time-based rule is configured (see the module docstring)."""
    lo, ph = policy.logical, policy.physical
    spans = [
        lo.keep_within or 0.0, ph.keep_within or 0.0, ph.pitr_window or 0.0,
        lo.daily * DAY, lo.weekly * 7 * DAY, lo.monthly * 31 * DAY, lo.yearly * 366 * DAY,
    ]
    longest = max(spans)
    return longest if longest > 0 else None


def resolve(mode: str, retention: float | None, policy: Policy) -> tuple[LockRule | None, list[str]]:
    """The rule for the settings, or the problems that make them invalid (``off`` → no rule).

    ``retention``: seconds, or None for ``retention`` (until the policy would expire the object)."""
    mode = (mode or "off").strip().lower()
    if mode not in MODES:
        return None, [f"repository.s3.object_lock: {mode!r} is not one of {', '.join(MODES)}"]
    if mode == "off":
        return None, []
    if retention is None:
        horizon = policy_horizon(policy)
        if horizon is None:
            return None, ["repository.s3.object_lock_retention: 'retention' needs a time-based retention rule "
                          "(retention.*.keep_within, daily/weekly/monthly/yearly or retention.physical.pitr_window); "
                          "set a duration such as 30d instead"]
        return LockRule(mode.upper(), horizon + MARGIN, f"retention policy: {fmt_duration(horizon)} (+1d margin)"), []
    if retention < 1:
        return None, ["repository.s3.object_lock_retention: must be at least 1s (S3 refuses a retain-until date in the past)"]
    return LockRule(mode.upper(), retention, fmt_duration(retention)), []


def retained(until: dt.datetime | None, now: dt.datetime) -> bool:
    """Does a retain-until date still forbid deleting the version at ``now``?"""
    return until is not None and until > now


__all__ = ["DAY", "LockRule", "MODES", "POLICY_RETENTION", "policy_horizon", "resolve", "retained"]
