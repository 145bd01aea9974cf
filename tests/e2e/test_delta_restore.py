"""``restore-cluster --delta`` (issue 13 §4) on real servers: over a data directory a restored
server has run in (and someone has damaged), only what differs is written, and the result is
exactly what a restore into an empty directory gives."""

from __future__ import annotations

import pytest

from support.cli import pgvault
from support.pg_fixtures import pg_majors

ROWS = "SELECT count(*), coalesce(sum(i), 0), coalesce(sum(length(t)), 0) FROM items"



@pytest.mark.parametrize("major", pg_majors() or [None])
def test_delta_restore_rewrites_only_what_differs_and_lands_exactly(major, archiving) -> None:  # type: ignore[no-untyped-def]
    a = archiving(major, data_checksums=True)
    c = a.cluster
    c.psql("CREATE TABLE items(i int PRIMARY KEY, t text);"
           " INSERT INTO items SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 30000) g; VACUUM (FREEZE) items")
    full = a.basebackup("--type", "full")
    at_full = c.psql(ROWS)
    c.psql("INSERT INTO items SELECT g, repeat(md5(g::text), 4) FROM generate_series(30001, 30500) g")
    a.switch_and_wait()
    incr = a.basebackup("--type", "incr")
    at_incr = c.psql(ROWS)

    r, first = a.restore("--backup", full["backup_id"], "--target-immediate", "--target-action", "promote", name="delta")
    assert first.query(ROWS) == at_full
    first.query("INSERT INTO items VALUES (-1, 'written on the restored copy'); CHECKPOINT")
    first.stop()
    data = first.data_dir
    items = data / c.psql("SELECT pg_relation_filepath('items')")
    with open(items, "r+b") as f:  # damage a page the copy's server wrote
        f.seek(8192 * 3 + 100)
        f.write(b"\xff" * 64)
    (data / "base" / "stray-file").write_text("not from the backup")

    # Over a server that runs: refused.
    r, running = a.restore("--backup", full["backup_id"], "--target-immediate", name="running")
    refused = pgvault(["restore-cluster", "-D", str(running.data_dir), "--delta", "--backup", full["backup_id"]],
                      a.env(), check=False)
    assert refused.returncode == 8 and "running" in refused.stderr
    running.stop()
    # Into a directory that is not a data directory: refused.
    other = a.work / "not-a-cluster"
    other.mkdir()
    (other / "x").write_text("x")
    refused = pgvault(["restore-cluster", "-D", str(other), "--delta", "--backup", full["backup_id"]], a.env(), check=False)
    assert refused.returncode == 11 and "PG_VERSION" in refused.stderr and (other / "x").exists()

    # The incremental's chain, over the copy of the full: exact, the stray file gone.
    r, second = a.restore("--delta", "--backup", incr["backup_id"], "--target-immediate", name="delta")
    assert second.data_dir == data
    assert second.query(ROWS) == at_incr
    assert not (data / "base" / "stray-file").exists()
    second.stop()
    logged = r.stderr
    assert "already as in the backup are kept" in logged, logged
