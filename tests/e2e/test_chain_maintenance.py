"""Incremental chains in the maintenance commands (issue 13 §1), on a real chain through the CLI:
``verify`` checks a backup with every backup it depends on and finds a broken link; ``expire``
keeps what a kept backup needs and says why; ``list``/``show``/``status`` show chains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support.archiving import ArchivingCluster
from support.cli import pgvault
from support.pg_fixtures import pg_majors


def _backup(a: ArchivingCluster, kind: str) -> str:
    b = a.basebackup("--type", kind)
    assert b["backup_type"] == kind, b.get("type_reason")
    return str(b["backup_id"])


def _items(a: ArchivingCluster, *args: str, code: int = 0) -> list[dict]:  # type: ignore[type-arg]
    r = pgvault(["verify", *args, "--json"], a.env(), check=False)
    assert r.returncode == code, r
    return list(json.loads(r.stdout)["items"])


@pytest.mark.parametrize("major", pg_majors()[-1:] or [None])
def test_chains_in_verify_expire_list_show_and_status(major, archiving) -> None:  # type: ignore[no-untyped-def]
    a = archiving(major, data_checksums=True)
    c = a.cluster
    c.psql("CREATE TABLE items(i int PRIMARY KEY, t text); INSERT INTO items SELECT g, md5(g::text) "
           "FROM generate_series(1, 20000) g; VACUUM (FREEZE) items")
    full = _backup(a, "full")
    ids = [full]
    for kind, sql in (("incr", "UPDATE items SET t = 'a' WHERE i < 500"), ("incr", "DELETE FROM items WHERE i > 19000"),
                      ("diff", "INSERT INTO items VALUES (30000, 'z')")):
        c.psql(sql)
        a.switch_and_wait()
        ids.append(_backup(a, kind))
    _, incr1, incr2, diff = ids

    # verify: incr2 with incr1 and the full, each object once; every file list read.
    items = _items(a, incr2)
    physical = [(i["backup_id"], i["subject"]) for i in items if i["kind"] == "physical"]
    assert list(dict.fromkeys(b for b, _ in physical)) == [full, incr1, incr2], physical  # the full first
    assert [b for b, s in physical if s == "files.json.zst"] == [full, incr1, incr2]
    [chain] = [i for i in items if i["kind"] == "chain"]
    assert chain["status"] == "ok" and chain["detail"] == f"3 backups, each verified: {full} (full), {incr1} (incr), {incr2} (incr)"
    everything = _items(a, "--all")
    keys = [i["key"] for i in everything if i["kind"] == "physical"]
    assert len(keys) == len(set(keys)) and {k.split("/")[2] for k in keys} == set(ids)
    assert [(i["backup_id"], i["status"]) for i in everything if i["kind"] == "chain"] == [(incr1, "ok"), (incr2, "ok"), (diff, "ok")]

    # list and show
    rows = {r["backup_id"]: r for r in pgvault(["list", "--json"], a.env()).json()["backups"] if r["kind"] == "physical"}
    assert [(rows[i]["backup_type"], rows[i]["reference"]) for i in ids] == [
        ("full", None), ("incr", full), ("incr", incr1), ("diff", full)]
    assert f"incr of {incr1}, " in pgvault(["list"], a.env()).stdout
    shown = pgvault(["show", incr2], a.env()).stdout
    assert f"3 backups, restored in this order: {full}, {incr1}, {incr2}" in shown

    # A broken link: the middle backup loses its tar.  verify names it and fails the incr above it.
    base = Path(a.repo_url) / "pitr" / "base"
    tar = next((base / incr1).glob("base*.tar*"))
    saved = tar.read_bytes()
    tar.unlink()
    failed = [(i["backup_id"], i["kind"]) for i in _items(a, incr2, code=6) if i["status"] == "failed"]
    assert failed == [(incr1, "physical"), (incr2, "chain")]
    tar.write_bytes(saved)

    # expire, keep_last 1: the diff and the full it needs stay, the incrs go.
    env = a.env(PGVAULT_RETENTION_PHYSICAL_KEEP_LAST="1")
    plan = pgvault(["expire", "--json"], env).json()
    reasons = {d["backup_id"]: (d["action"], d["reasons"]) for d in plan["physical"]}
    assert reasons[diff] == ("keep", ["last 1"]) and reasons[full] == ("keep", [f"needed by {diff} (diff)"])
    assert reasons[incr1][0] == reasons[incr2][0] == "delete"
    assert plan["wal"]["keep_from_backup"] == full
    pgvault(["expire", "--apply"], env)
    assert sorted(p.parent.name for p in base.glob("*/manifest.json")) == [full, diff]
    assert not [p for p in base.rglob("*") if p.is_file() and p.parent.name in (incr1, incr2)]
    doc = pgvault(["status", "--no-connect", "--json"], a.env(), check=False).json()
    assert "chain_broken" not in {r["code"] for r in doc["reasons"]}

    # The full's manifest goes (by hand): the diff's chain is broken everywhere it is shown.
    (base / full / "manifest.json").unlink()
    why = f"it needs base backup {full}, and it is not in the repository"
    doc = pgvault(["status", "--no-connect", "--json"], a.env(), check=False).json()
    assert doc["verdict"] == "CRITICAL" and any(r["code"] == "chain_broken" and why in r["message"] for r in doc["reasons"])
    assert "BROKEN CHAIN" in pgvault(["list"], a.env()).stdout
    [chain] = [i for i in _items(a, diff, code=6) if i["kind"] == "chain"]
    assert chain["status"] == "failed" and why in chain["detail"]
    notes = pgvault(["expire", "--json"], env).json()["notes"]
    assert any(diff in n and why in n for n in notes)
