"""``list``, ``show`` and ``verify`` on incremental chains, through the CLI on a local repository
whose manifests are made up (a full, an incr of it, a diff of it, and an incr whose reference was
deleted)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from pgvault.cli import main
from pgvault.pg import wal
from pgvault.pipeline import PipelineSpec, StreamResult
from pgvault.repository import layout
from pgvault.repository.manifest import StoredObject
from pgvault.repository.physical import PhysicalManifest
from pgvault.storage.local import LocalStorage

SEG = 16 << 20
FULL, INCR, DIFF, ORPHAN, GONE = ("20261205T010203Z", "20261205T020000Z", "20261205T030000Z", "20261205T040000Z",
                                  "20261204T000000Z")


def lsn(segno: int) -> str:
    return str(wal.segment_start_lsn(segno, SEG) + 0x28)


def put(storage: LocalStorage, backup_id: str, segno: int, kind: str = "full", ref: str | None = None,
        ref_seg: int = 0) -> None:
    t = layout.parse_backup_id(backup_id).isoformat()
    prefix = layout.base_prefix("c", backup_id)
    data = backup_id.encode()
    with storage.open_write(prefix + "base.tar") as w:
        w.write(data)
    sha = hashlib.sha256(data).hexdigest()
    m = PhysicalManifest(
        backup_id=backup_id, cluster="c", system_identifier="1", server_version="18.1", server_version_num=180001,
        wal_segment_size=SEG, timeline=1, start_lsn=lsn(segno), stop_lsn=lsn(segno + 1),
        first_wal=wal.segment_name(1, segno, SEG), last_wal=wal.segment_name(1, segno + 1, SEG), started_at=t,
        finished_at=t, duration_seconds=1.0, backup_label="", tablespace_map="", pipeline=PipelineSpec(compression="none", encryption="none"),
        base=StoredObject("base", "base.tar", StreamResult(len(data), sha, len(data), sha)), base_files=1,
        tablespaces=(), host="h", pgvault_version="0", stopped_at=t, backup_type=kind, reference=ref,
        reference_start_lsn=lsn(ref_seg) if ref else "")
    with storage.open_write(prefix + layout.MANIFEST_NAME) as w:
        w.write(m.dumps())


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    for k in list(os.environ):
        if k.startswith("PGVAULT_") and k not in ("PGVAULT_POSTGRES_BIN_DIRS", "PGVAULT_PG_BINDIRS"):
            monkeypatch.delenv(k)
    root = tmp_path / "repo"
    root.mkdir()
    storage = LocalStorage(str(root))
    put(storage, FULL, 2)
    put(storage, INCR, 4, "incr", FULL, 2)
    put(storage, DIFF, 6, "diff", FULL, 2)
    put(storage, ORPHAN, 8, "incr", GONE, 1)
    return ["--cluster", "c", "--repository", str(root)]


def test_list_shows_each_backups_type_reference_and_broken_chains(repo: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--json", *repo]) == 0
    rows = {r["backup_id"]: r for r in json.loads(capsys.readouterr().out)["backups"]}
    assert {i: (r["backup_type"], r["reference"], r["chain_broken"]) for i, r in rows.items()} == {
        FULL: ("full", None, None), INCR: ("incr", FULL, None), DIFF: ("diff", FULL, None),
        ORPHAN: ("incr", GONE, f"it needs base backup {GONE}, and it is not in the repository")}
    assert main(["list", *repo]) == 0
    out, err = capsys.readouterr()
    lines = {line.split()[0]: line for line in out.splitlines() if line[:8].isdigit()}
    assert f"incr of {FULL}, {lsn(4)}.." in lines[INCR] and " ok " in lines[INCR]
    assert f"diff of {FULL}, " in lines[DIFF]
    assert "BROKEN CHAIN" in lines[ORPHAN] and "BROKEN" not in lines[FULL]
    assert f"{lsn(2)}..{lsn(3)} tl 1" in lines[FULL] and " of " not in lines[FULL]
    assert f"base backup {ORPHAN} cannot be restored, its chain is broken" in err


def test_show_prints_the_chain_a_restore_applies(repo: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", INCR, *repo]) == 0
    out = capsys.readouterr().out
    assert f"backup      {INCR} (physical, incr)" in out
    assert f"chain       2 backups, restored in this order: {FULL}, {INCR} (incr of {FULL})" in out
    assert main(["show", FULL, "--json", *repo]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["chain"] == [FULL] and doc["chain_broken"] is None and doc["backup"]["backup_id"] == FULL
    assert main(["show", ORPHAN, *repo]) == 0
    assert f"chain       BROKEN: it needs base backup {GONE}, and it is not in the repository" in capsys.readouterr().out
    assert main(["show", "20200101T000000Z", *repo]) == 5
    assert "no backup 20200101T000000Z" in capsys.readouterr().err


def test_verify_fails_a_broken_chain_with_the_integrity_exit_status(repo: list[str],
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", DIFF, *repo, "--json"]) == 6  # no WAL archived: its continuity fails
    items = json.loads(capsys.readouterr().out)["items"]
    assert [(i["backup_id"], i["kind"], i["status"]) for i in items if i["kind"] in ("physical", "chain")] == [
        (FULL, "physical", "ok"), (DIFF, "physical", "ok"), (DIFF, "chain", "ok")]
    assert main(["verify", ORPHAN, *repo, "--json"]) == 6
    items = json.loads(capsys.readouterr().out)["items"]
    [chain] = [i for i in items if i["kind"] == "chain"]
    assert chain["status"] == "failed" and f"it needs base backup {GONE}" in chain["detail"]
