"""What ``repo sync`` leaves in the repository it copied *into*: one write-once record per run.

``<cluster>/sync/<YYYY>/<MM>/<run-id>.json`` (created with ``put_if_absent``, never rewritten, so
a copy on a WORM / Object Lock bucket works): when the run started and finished, from where, what
it copied and whether it completed.  ``status`` shows the newest one of each repository.  The
month prefixes keep the read of "the newest" to one or two small listings however many runs there
were, and let a lifecycle rule drop old ones by prefix.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from pgvault.storage import ObjectNotFound, Storage


def sync_root(cluster: str) -> str:
    return f"{cluster}/sync/"


def sync_record_key(cluster: str, run_id: str, started: dt.datetime) -> str:
    t = started.astimezone(dt.UTC)
    return f"{cluster}/sync/{t:%Y}/{t:%m}/{run_id}.json"


def save_sync_record(storage: Storage, cluster: str, run_id: str, started: dt.datetime, doc: dict[str, Any]) -> str:
    key = sync_record_key(cluster, run_id, started)
    storage.put_if_absent(key, json.dumps({"format": 1, **doc}, indent=1).encode())
    return key


def newest_sync_record(storage: Storage, cluster: str, *, now: dt.datetime | None = None) -> dict[str, Any] | None:
    """The newest run's record (this month's, else last month's), or None."""
    now = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    last_month = (now.replace(day=1) - dt.timedelta(days=1))
    for t in (now, last_month):
        keys = [i.key for i in storage.list(f"{cluster}/sync/{t:%Y}/{t:%m}/") if i.key.endswith(".json")]
        for key in sorted(keys, reverse=True):  # run ids start with the UTC start time
            try:
                doc = json.loads(storage.read_bytes(key))
            except (ObjectNotFound, ValueError):
                continue
            if isinstance(doc, dict):
                return doc
    return None
