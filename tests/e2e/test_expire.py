"""``pgvault expire`` end to end: on repositories with a known history it keeps exactly the set the
policy names, deletes only with ``--apply``, sweeps debris past its grace period, and point-in-time
recovery still lands exactly inside the window it keeps."""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.archiving import ArchivingCluster
from support.cli import clean_env, pgvault
from support.pg_fixtures import pg_majors

from .conftest import AgeKey

# A backdated history (ids are UTC times; the real backup made by the test is the newest).
HISTORY = {
    "C1": "20200601T020000Z", "C2": "20201231T020000Z", "C3": "20210115T020000Z", "C4": "20210131T020000Z",
    "C5": "20210201T020000Z", "C6": "20210201T140000Z", "C7": "20210202T020000Z",
}


@pytest.fixture
def env(pg_latest, tmp_path: Path, age_key: AgeKey) -> Iterator[dict[str, str]]:  # type: ignore[no-untyped-def]
    """A fresh local repository, encryption on, and a small database of the newest server."""
    db = f"t_{uuid.uuid4().hex[:10]}"
    pg_latest.create_database(db)
    pg_latest.psql("CREATE TABLE t(i int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100)", dbname=db)
    yield clean_env(**pg_latest.env(), PGVAULT_REPOSITORY_URL=str(tmp_path / "repo"), PGVAULT_CLUSTER="exp",
                    PGVAULT_ENCRYPTION_AGE_RECIPIENTS=age_key.recipient,
                    PGVAULT_ENCRYPTION_AGE_IDENTITY_FILE=str(age_key.identity_file), TEST_DB=db)
    pg_latest.drop_database(db)


def _folder(env: dict[str, str], backup_id: str) -> Path:
    return Path(env["PGVAULT_REPOSITORY_URL"]) / "exp" / "logical" / backup_id[:4] / backup_id[4:6] / backup_id


def _backdate(env: dict[str, str], source_id: str, backup_id: str) -> None:
    """Copy a real backup under an older id, its manifest rewritten to match (a restorable backup)."""
    src, dst = _folder(env, source_id), _folder(env, backup_id)
    shutil.copytree(src, dst)
    doc = json.loads((dst / "manifest.json").read_text())
    stamp = f"{backup_id[:4]}-{backup_id[4:6]}-{backup_id[6:8]}T{backup_id[9:11]}:{backup_id[11:13]}:{backup_id[13:15]}+00:00"
    doc.update(backup_id=backup_id, started_at=stamp, finished_at=stamp)
    (dst / "manifest.json").write_text(json.dumps(doc, indent=2) + "\n")


def _age(path: Path, seconds: float) -> None:
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        t = time.time() - seconds
        os.utime(p, (t, t))


def test_expire_keeps_exactly_the_policy_set_of_logical_backups(env: dict[str, str], pg_latest) -> None:  # type: ignore[no-untyped-def]
    real = pgvault(["backup", "--database", env["TEST_DB"], "--no-globals", "--json"], env).json()["backup"]["backup_id"]
    for backup_id in HISTORY.values():
        _backdate(env, real, backup_id)
    policy = {"PGVAULT_RETENTION_LOGICAL_KEEP_LAST": "1", "PGVAULT_RETENTION_LOGICAL_DAILY": "3",
              "PGVAULT_RETENTION_LOGICAL_MONTHLY": "3", "PGVAULT_RETENTION_LOGICAL_YEARLY": "3"}
    e = {**env, **policy}

    # Without a policy: everything is kept, and the plan says why.
    plan = pgvault(["expire", "--json"], env).json()
    assert plan["kind"] == "expire_plan" and plan["format"] == 1 and plan["applied"] is False
    assert {d["action"] for d in plan["logical"]} == {"keep"}
    assert "no retention policy is configured" in plan["notes"][0]

    # The plan: newest first, every rule that keeps a backup, "no rule keeps it" for the rest.
    plan = pgvault(["expire", "--json"], e).json()
    got = {d["backup_id"]: (d["action"], d["reasons"]) for d in plan["logical"]}
    h = HISTORY
    assert got == {
        real: ("keep", ["last 1", f"daily {real[:4]}-{real[4:6]}-{real[6:8]}", f"monthly {real[:4]}-{real[4:6]}",
                        f"yearly {real[:4]}"]),
        h["C7"]: ("keep", ["daily 2021-02-02", "monthly 2021-02", "yearly 2021"]),
        h["C6"]: ("keep", ["daily 2021-02-01"]),
        h["C5"]: ("delete", ["no rule keeps it"]),
        h["C4"]: ("keep", ["monthly 2021-01"]),
        h["C3"]: ("delete", ["no rule keeps it"]),
        h["C2"]: ("keep", ["yearly 2020"]),
        h["C1"]: ("delete", ["no rule keeps it"]),
    }
    assert [d["backup_id"] for d in plan["logical"]] == sorted(got, reverse=True)
    assert all(_folder(env, i).joinpath("manifest.json").exists() for i in got)  # a dry run deletes nothing
    human = pgvault(["expire"], e).stdout
    assert "dry run" in human and "no rule keeps it" in human and "would delete: 3 logical backup(s)" in human

    done = pgvault(["expire", "--apply", "--json"], e).json()
    assert done["applied"] is True and sorted(done["deleted"]["logical"]) == sorted([h["C1"], h["C3"], h["C5"]])
    listed = [b["backup_id"] for b in pgvault(["list", "--json"], env).json()["backups"]]
    assert listed == sorted([h["C2"], h["C4"], h["C6"], h["C7"], real])
    for gone in ("C1", "C3", "C5"):
        assert not any(p.is_file() for p in _folder(env, h[gone]).rglob("*"))

    # A kept, backdated backup is still a whole backup: it restores and verifies.
    target = f"r_{uuid.uuid4().hex[:8]}"
    try:
        res = pgvault(["restore", h["C2"], "--database", env["TEST_DB"], "--target-database", target, "--json"], env).json()
        assert res["restore"]["verified"] is True
        assert pg_latest.psql("SELECT count(*) FROM t", dbname=target) == "100"
    finally:
        pg_latest.drop_database(target)

    # Nothing more to do the second time.
    again = pgvault(["expire", "--apply", "--json"], e).json()
    assert again["summary"]["logical"] == {"keep": 5, "delete": 0, "delete_bytes": 0}


def test_expire_sweeps_debris_older_than_the_grace_and_leaves_younger_alone(env: dict[str, str]) -> None:
    real = pgvault(["backup", "--database", env["TEST_DB"], "--no-globals", "--json"], env).json()["backup"]["backup_id"]
    repo = Path(env["PGVAULT_REPOSITORY_URL"]) / "exp"
    dump = next(p for p in _folder(env, real).iterdir() if p.name != "manifest.json")
    # Interrupted runs: a dump without a manifest two days ago, one an hour ago, a base backup
    # folder without a manifest, and a WAL object whose checksum record never came.
    old, young = _folder(env, "20201010T020000Z"), _folder(env, "20201011T020000Z")
    base = repo / "base" / "20201010T030000Z"
    orphan = repo / "wal" / "0000000100000000" / "000000010000000000000003.zst.age"
    for d in (old, young, base, orphan.parent):
        d.mkdir(parents=True)
    shutil.copy(dump, old / dump.name)
    shutil.copy(dump, young / dump.name)
    (base / "base.tar.zst.age").write_bytes(b"partial")
    orphan.write_bytes(b"orphan")
    _age(old, 2 * 86400)
    _age(base, 2 * 86400)
    _age(orphan, 2 * 86400)
    _age(young, 3600)
    e = {**env, "PGVAULT_RETENTION_DEBRIS_GRACE": "1d"}

    plan = pgvault(["expire", "--json"], e).json()
    debris = {d["where"]: (d["kind"], d["action"]) for d in plan["debris"]}
    assert debris == {
        "exp/logical/2020/10/20201010T020000Z/": ("logical", "delete"),
        "exp/logical/2020/10/20201011T020000Z/": ("logical", "keep"),
        "exp/base/20201010T030000Z/": ("base", "delete"),
        "000000010000000000000003": ("wal", "delete"),
    }
    assert {d["action"] for d in plan["logical"]} == {"keep"}  # no policy: the backup itself is kept

    pgvault(["expire", "--apply"], e)
    assert not (old / dump.name).exists() and not (base / "base.tar.zst.age").exists() and not orphan.exists()
    assert (young / dump.name).exists()
    assert (_folder(env, real) / "manifest.json").exists() and (_folder(env, real) / dump.name).exists()
    # Once it is older than the grace, the young one goes too; a longer grace would have kept it.
    _age(young, 2 * 86400)
    kept = pgvault(["expire", "--json"], {**env, "PGVAULT_RETENTION_DEBRIS_GRACE": "3d"}).json()
    assert [d["action"] for d in kept["debris"]] == ["keep"]
    pgvault(["expire", "--apply"], e)
    assert not (young / dump.name).exists()


# --- base backups and WAL -----------------------------------------------------------------------




def _ticks(a: ArchivingCluster, first: int, last: int) -> None:
    for i in range(first, last + 1):
        a.cluster.psql(f"INSERT INTO ticks VALUES ({i})")


def _wal_files(a: ArchivingCluster) -> set[str]:
    return {str(p.relative_to(a.repo_url)) for p in Path(a.repo_url).joinpath("pitr", "wal").rglob("*") if p.is_file()}


def _segno(name: str) -> int:
    # 16 MiB segments (the test clusters' default): 256 per log id
    return int(name[8:16], 16) * 256 + int(name[16:24], 16)


@pytest.mark.parametrize("major", pg_majors()[-1:] or [None])
def test_expire_keeps_the_last_two_base_backups_and_exactly_their_wal_and_pitr_still_lands(major, archiving) -> None:  # type: ignore[no-untyped-def]
    a = archiving(major)
    a.cluster.psql("CREATE TABLE ticks(i int PRIMARY KEY)")
    b1 = a.basebackup()
    _ticks(a, 1, 10)
    a.switch_and_wait()
    b2 = a.basebackup()
    _ticks(a, 11, 20)
    t15 = a.cluster.psql("SELECT pg_xact_commit_timestamp(xmin) FROM ticks WHERE i = 15")
    t5 = a.cluster.psql("SELECT pg_xact_commit_timestamp(xmin) FROM ticks WHERE i = 5")
    a.switch_and_wait()
    b3 = a.basebackup()
    _ticks(a, 21, 30)
    a.switch_and_wait()
    assert b1["timeline"] == b2["timeline"] == 1

    before = _wal_files(a)
    boundary = _segno(b2["first_wal"])
    names = {f.rsplit("/", 1)[-1].split(".")[0] for f in before}
    assert any(len(n) == 24 and _segno(n) < boundary for n in names)  # there is WAL to expire

    e = a.env(PGVAULT_RETENTION_PHYSICAL_KEEP_LAST="2")
    dry = pgvault(["expire", "--json"], e).json()
    assert _wal_files(a) == before
    assert dry["wal"]["keep_from"] == b2["first_wal"] and dry["wal"]["keep_from_backup"] == b2["backup_id"]

    done = pgvault(["expire", "--apply", "--json"], e).json()
    assert [(d["backup_id"], d["action"]) for d in done["physical"]] == [
        (b3["backup_id"], "keep"), (b2["backup_id"], "keep"), (b1["backup_id"], "delete")]
    assert done["deleted"]["physical"] == [b1["backup_id"]]
    base = Path(a.repo_url) / "pitr" / "base"
    assert not any(p.is_file() for p in (base / b1["backup_id"]).rglob("*"))
    for b in (b2, b3):
        assert (base / b["backup_id"] / "manifest.json").exists()

    # Exactly the WAL before the second backup's start is gone (segments, b1's backup history file
    # and their checksum records); everything from it on is still there.
    def needed(key: str) -> bool:
        name = key.rsplit("/", 1)[-1].split(".")[0]
        return len(name) != 24 or _segno(name) >= boundary
    after = _wal_files(a)
    assert after == {f for f in before if needed(f)}
    assert any(f.endswith(".backup.json") for f in before - after)  # b1's backup history file went too
    gone = {f.rsplit("/", 1)[-1] for f in before - after}
    assert done["wal"]["delete_files"] == len({g.split(".zst")[0].removesuffix(".json") for g in gone})

    archive = pgvault(["list", "--json"], a.env()).json()["archive"]
    assert archive["recoverable_from"]["backup_id"] == b2["backup_id"] and archive["gaps"] == []

    # Inside the window recovery still lands exactly; before it, nothing can reach the target.
    r, restored = a.restore("--target-time", t15)
    doc = r.json()
    assert doc["plan"]["backup_id"] == b2["backup_id"] and doc["recovery"]["state"] == "paused"
    assert restored.query("SELECT count(*), max(i) FROM ticks") == "15|15"
    restored.stop()
    r = pgvault(["restore-cluster", "-D", str(a.work / "too-old"), "--target-time", t5, "--dry-run"], a.env(), check=False)
    assert r.returncode == 5 and b2["backup_id"] in r.stderr
