"""kill -9 of the WAL archiving machinery loses nothing (issue 8, the fault matrix).

A workload commits numbered rows while the background pusher (``wal archive-daemon``) is
killed with SIGKILL again and again, mid-upload.  PostgreSQL retries the segments it was not
told were archived; pgvault must neither confirm a segment that is not stored nor wedge on the
debris of a killed upload (a checksum record without its object).  At the end the archive is
continuous and a restore to its end has every committed row.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from support.archiving import daemons
from support.cli import pgvault
from support.pg_fixtures import pg_majors

MAJOR = (pg_majors() or [None])[-1]


def _pushers(data_dir: str) -> list[int]:
    return daemons(data_dir, ("archive-daemon",))


@pytest.mark.parametrize("major", [MAJOR])
def test_kill_9_of_the_pusher_mid_upload_loses_nothing(major, archiving) -> None:  # type: ignore[no-untyped-def]
    a = archiving(major)
    a.cluster.psql("CREATE TABLE ticks(i int PRIMARY KEY, pad text)")
    a.basebackup()
    data_dir = str(a.cluster.datadir)
    stop = threading.Event()
    kills: list[int] = []

    def killer() -> None:
        while not stop.is_set():
            for pid in _pushers(data_dir):
                try:
                    os.kill(pid, signal.SIGKILL)
                    kills.append(pid)
                except ProcessLookupError:
                    pass
            time.sleep(0.3)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    try:
        for batch in range(12):  # about one segment of WAL per batch
            a.cluster.psql(f"INSERT INTO ticks SELECT g, repeat(md5(g::text), 40) FROM generate_series({batch * 2000 + 1}, "
                           f"{(batch + 1) * 2000}) g")
            a.cluster.psql("SELECT pg_switch_wal()")
    finally:
        stop.set()
        t.join()
    assert kills, "the pusher was never seen running: the test did not test anything"
    last = a.switch_and_wait(timeout=180)  # PostgreSQL's retries get everything archived in the end
    st = pgvault(["status", "--json", "--no-connect"], a.env(), check=False).json()
    assert st["archive"]["gaps"] == [] and st["archive"]["records_without_object"] == [], st["archive"]
    v = pgvault(["verify", "--all"], a.env(), check=False)
    assert v.returncode == 0, v
    r, restored = a.restore()
    assert r.json()["recovery"]["state"] == "promoted"
    assert restored.query("SELECT count(*), max(i) FROM ticks") == "24000|24000"
    print(f"pusher killed {len(kills)} times; archive continuous to {last}")
