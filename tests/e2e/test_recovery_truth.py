"""A restore that says it reached the target reached it (issue 8, items 1 and 2).

Each test commits rows one transaction each (``ticks.i`` = 1, 2, ...) on an archiving server, then
damages the archive the way outside testing did, and checks that no command reports success for
a recovery that lost committed rows.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from support.archiving import ArchivingCluster, Restored, as_postgres, chown_pg
from support.cli import pgvault
from support.pg_fixtures import pg_majors

MAJOR = (pg_majors() or [None])[-1]


def _rows(a: ArchivingCluster, first: int, last: int) -> str:
    """Commit rows first..last (a few per segment) and return the last archived segment."""
    seg = ""
    for i in range(first, last + 1):
        a.cluster.psql(f"INSERT INTO ticks VALUES ({i})")
        if i % 10 == 0:
            seg = a.switch_and_wait()
    return a.switch_and_wait() if last % 10 else seg


def _files(a: ArchivingCluster, segment: str) -> tuple[Path, Path]:
    [obj] = [p for p in Path(a.repo_url).glob(f"pitr/wal/*/{segment}.*") if not p.name.endswith(".json")]
    return obj, obj.with_name(segment + ".json")


def _server_log(r: Restored, doc: dict[str, object] | None = None) -> str:
    logs = sorted(r.data_dir.parent.glob(f"{r.data_dir.name}-recovery*.log"), key=lambda p: p.stat().st_mtime)
    return logs[-1].read_text() if logs else ""


def _segments_after_backup(a: ArchivingCluster, m: dict[str, str]) -> list[str]:
    return sorted(p.name.split(".")[0] for p in Path(a.repo_url).glob("pitr/wal/*/*.json")
                  if p.name.split(".")[0] > m["last_wal"] and len(p.name.split(".")[0]) == 24)


@pytest.mark.parametrize("major", [MAJOR])
def test_a_recorded_but_missing_object_is_a_hole_everywhere(major, archiving) -> None:  # type: ignore[no-untyped-def]
    a = archiving(major)
    a.cluster.psql("CREATE TABLE ticks(i int PRIMARY KEY)")
    m = a.basebackup()
    _rows(a, 1, 40)
    segs = _segments_after_backup(a, m)
    victim = segs[len(segs) // 2]
    obj, record = _files(a, victim)
    obj.unlink()  # an upload that never finished, or an object deleted by hand; the record stays
    old = record.stat().st_mtime - 3600
    doc = json.loads(record.read_text())
    doc["archived_at"] = "2026-01-01T00:00:00+00:00"  # long ago: not an upload under way
    record.write_text(json.dumps(doc))
    os.utime(record, (old, old))

    # Every view calls it a hole.
    st = pgvault(["status", "--json"], a.env(), check=False)
    assert st.returncode == 2, st
    archive = st.json()["archive"]
    assert archive["records_without_object"] == [victim] and {"from": victim, "to": victim} in archive["gaps"]
    assert any(r["code"] == "wal_object_missing" for r in st.json()["reasons"]), st.json()["reasons"]
    v = pgvault(["verify", "--all"], a.env(), check=False)
    assert v.returncode == 6 and victim in v.stdout, v
    dry = pgvault(["restore-cluster", "-D", str(a.work / "dry"), "--dry-run"], a.env(), check=False)
    assert dry.returncode == 5 and victim in dry.stderr and "hole" in dry.stderr, dry
    # restore-cluster to the end of the archive refuses before touching anything.
    r, _restored = a.restore(check=False, name="refused")
    assert r.returncode == 5 and victim in r.stderr and not (a.work / "refused").exists(), r


@pytest.mark.parametrize("major", [MAJOR])
def test_restore_command_stops_recovery_at_a_hole_it_meets(major, archiving) -> None:  # type: ignore[no-untyped-def]
    """The second line of defence: the layout was planned on a whole archive, then a segment went
    missing (deleted, expired) before recovery read it.  wal fetch exits 126, not 1, so the
    server stops instead of promoting with half the rows."""
    a = archiving(major)
    a.cluster.psql("CREATE TABLE ticks(i int PRIMARY KEY)")
    m = a.basebackup()
    _rows(a, 1, 40)
    victim = _segments_after_backup(a, m)[2]
    r, restored = a.restore(start=False, name="laid-out")
    assert r.returncode == 0, r
    for p in _files(a, victim):
        p.unlink()
    log = a.work / "by-hand.log"
    chown_pg(log.parent)
    pg_ctl = str(a.cluster.bindir.program("pg_ctl"))
    started = subprocess.run(as_postgres([pg_ctl, "-D", str(restored.data_dir), "-l", str(log), "-w", "-t", "120",
                                          "-o", "-c lc_messages=C", "start"]), capture_output=True, text=True)
    text = log.read_text()
    assert started.returncode != 0, text
    assert "database system is ready to accept connections" not in text
    assert f"{victim} is not in the archive, but later WAL of its timeline is archived" in text, text


@pytest.mark.parametrize("major", [MAJOR])
def test_recovery_that_stops_short_of_the_archive_fails_and_is_not_left_running(major, archiving, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Planning saw WAL up to segment N, then N and everything after it vanished before recovery
    read them (a concurrent expire, a lifecycle rule): restore_command then truly finds the end of
    the archive and PostgreSQL promotes early.  restore-cluster compares the stop with its plan."""
    a = archiving(major)
    a.cluster.psql("CREATE TABLE ticks(i int PRIMARY KEY)")
    m = a.basebackup()
    _rows(a, 1, 40)
    segs = _segments_after_backup(a, m)
    cut = segs[2]
    doomed = [p for s in segs[2:] for p in _files(a, s)]
    # A restore_command wrapper that removes the tail of the archive when recovery first asks for it.
    wrapper = a.work / "fetch-and-lose-the-tail"
    wrapper.write_text("#!/bin/sh\n"
                       f'if [ "$3" = "{cut}" ]; then rm -f {" ".join(str(p) for p in doomed)}; fi\n'
                       f'PGVAULT_RESTORE_PREFETCH=0 exec {a.launcher} "$@"\n')  # nothing read ahead
    wrapper.chmod(0o755)
    chown_pg(wrapper)
    r, restored = a.restore("--pgvault-command", str(wrapper), check=False, name="short")
    assert r.returncode == 12, r
    assert "stopped short" in r.stderr and segs[-1] in r.stderr, r.stderr
    assert not (restored.data_dir / "postmaster.pid").exists()  # promoted early, then stopped: not left in use


@pytest.mark.parametrize("major", [MAJOR])
def test_a_second_restore_into_the_same_path_reports_only_itself(major, archiving) -> None:  # type: ignore[no-untyped-def]
    a = archiving(major)
    a.cluster.psql("CREATE TABLE ticks(i int PRIMARY KEY)")
    m = a.basebackup()
    _rows(a, 1, 20)
    point = a.cluster.psql("SELECT pg_current_wal_lsn()")
    a.run_as_postgres(["restore-point", "after-20"])
    _rows(a, 21, 40)

    r1, first = a.restore("--target-name", "after-20", name="same")
    assert r1.json()["recovery"]["state"] == "paused"
    first.stop()
    shutil.rmtree(first.data_dir)
    # Run 2 into the same path, to the end of the archive: its own stop point, and a server that
    # accepts connections when the command returns.
    r2, second = a.restore(name="same")
    rec = r2.json()["recovery"]
    assert rec["state"] == "promoted" and "restore point" not in rec["stop_detail"], rec
    assert rec["log_file"] != r1.json()["recovery"]["log_file"]
    assert rec["confirmed_by"].startswith("connection") and "False" in rec["confirmed_by"], rec
    assert second.query("SELECT count(*), max(i) FROM ticks") == "40|40"
    second.stop()
    shutil.rmtree(second.data_dir)

    # Run 3 with a corrupt segment: recovery fails (exit 12), not "promoted" from an older log.
    victim = _segments_after_backup(a, m)[1]
    obj, _rec = _files(a, victim)
    raw = bytearray(obj.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    obj.write_bytes(bytes(raw))
    r3, third = a.restore(name="same", check=False)
    assert r3.returncode == 12 and "recovery failed" in r3.stderr, r3
    assert r3.json()["kind"] == "error" and "nothing was promoted" in r3.json()["hint"]
    assert point  # the restore point's position was taken before the later rows
