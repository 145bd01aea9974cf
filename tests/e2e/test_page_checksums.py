"""Page checksums checked while a base backup reads the cluster (issue 13 §3), on real servers.

The proof the issue asks for: flip a byte in a page of a table file on the stopped cluster,
start it, back it up: the backup completes and is stored, the page is named by relation and
block in the manifest, in ``list``, ``status`` and the metrics, and the command exits 6 (or 0 with
a warning under ``backup.page_checksums: warn``).  A clean cluster's every page verifies, which
is the check that pgvault computes PostgreSQL's checksum on pages PostgreSQL wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support.cli import pgvault
from support.pg_fixtures import pg_majors

BLCKSZ = 8192


def _manifest(a, backup_id: str) -> dict:  # type: ignore[no-untyped-def]
    return json.loads((Path(a.repo_url) / "pitr" / "base" / backup_id / "manifest.json").read_text())


@pytest.mark.parametrize("major", pg_majors() or [None])
def test_a_flipped_byte_is_named_by_relation_and_block_and_the_backup_is_still_stored(major, archiving) -> None:  # type: ignore[no-untyped-def]
    a = archiving(major, data_checksums=True)
    c = a.cluster
    c.psql("CREATE TABLE bad_rows(i int, t text) WITH (autovacuum_enabled = off);"
           " INSERT INTO bad_rows SELECT g, repeat('x', 200) FROM generate_series(1, 3000) g;"
           " CREATE TABLE good_rows AS SELECT generate_series(1, 1000) AS i; CHECKPOINT")
    relpath = c.psql("SELECT pg_relation_filepath('bad_rows')")
    pages = int(c.psql("SELECT pg_relation_size('bad_rows') / 8192"))
    assert pages > 20

    clean = a.basebackup()  # every page PostgreSQL wrote verifies
    doc = _manifest(a, clean["backup_id"])["page_checksums"]
    assert doc["checked"] is True and doc["failed"] == 0 and doc["bad_pages"] == []
    assert doc["pages"] >= pages

    c.stop()
    path = c.datadir / relpath
    with open(path, "r+b") as f:  # one byte in the middle of block 7's tuples
        f.seek(7 * BLCKSZ + 5000)
        byte = f.read(1)
        f.seek(7 * BLCKSZ + 5000)
        f.write(bytes([byte[0] ^ 0xFF]))
    c.start()

    r = a.run_as_postgres(["basebackup", "--json", "--archive-timeout", "120"], check=False)
    assert r.returncode == 6, r.stderr
    assert "public.bad_rows" in r.stderr and "block 7" in r.stderr and "stored and complete" in r.stderr
    listed = pgvault(["list", "--json"], a.env()).json()
    newest = max((b for b in listed["backups"] if b["kind"] == "physical"), key=lambda b: b["backup_id"])
    assert newest["page_checksums"]["failed"] == 1 and newest["page_checksums"]["bad_pages"][0]["block"] == 7
    assert newest["backup_id"] != clean["backup_id"]
    bad = _manifest(a, newest["backup_id"])["page_checksums"]
    assert bad["failed"] == 1 and len(bad["bad_pages"]) == 1
    page = bad["bad_pages"][0]
    assert (page["file"], page["relation"], page["database"], page["block"], page["fork"]) == (
        relpath, "public.bad_rows", "postgres", 7, "main")
    assert page["stored"] != page["computed"]
    # The backup is whole: verify passes (its objects are intact; the damage is the cluster's).
    v = pgvault(["verify", newest["backup_id"], "--json"], a.env(), check=False)
    assert v.returncode == 0, v.stderr

    # status names it (CRITICAL), and the metric counts it.
    st = pgvault(["status", "--json", "--no-connect"], a.env(), check=False)
    reasons = {r["code"]: r["message"] for r in st.json()["reasons"]}
    assert st.returncode == 2 and "public.bad_rows" in reasons["corrupt_pages"] and "block 7" in reasons["corrupt_pages"]
    assert st.json()["last_physical"]["bad_pages"] == 1
    metrics = pgvault(["metrics", "--no-connect"], a.env()).stdout
    assert 'pgvault_base_backup_bad_pages{cluster="pitr"} 1.0' in metrics

    # Under 'warn' the same finding is a warning and the command succeeds.
    w = a.run_as_postgres(["basebackup", "--json", "--archive-timeout", "120"], check=False,
                          env=a.env(PGVAULT_BACKUP_PAGE_CHECKSUMS="warn"))
    assert w.returncode == 0, w.stderr
    assert "page checksum failed" in w.stderr and "public.bad_rows" in w.stderr
    assert json.loads(w.stdout)["backup"]["page_checksums"]["failed"] == 1

    # 'off' does not look.
    o = a.run_as_postgres(["basebackup", "--json", "--archive-timeout", "120"], check=False,
                          env=a.env(PGVAULT_BACKUP_PAGE_CHECKSUMS="off"))
    assert o.returncode == 0, o.stderr
    assert json.loads(o.stdout)["backup"]["page_checksums"]["checked"] is False


@pytest.mark.parametrize("major", pg_majors()[:1] or [None])
def test_a_cluster_without_data_checksums_says_so(major, archiving) -> None:  # type: ignore[no-untyped-def]
    a = archiving(major)
    if a.cluster.psql("SHOW data_checksums") == "on":
        pytest.skip("this major's initdb turns data checksums on by default")
    b = a.basebackup()
    doc = _manifest(a, b["backup_id"])["page_checksums"]
    assert doc["checked"] is False and "no data checksums" in doc["reason"]
