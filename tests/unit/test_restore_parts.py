"""Pure parts of logical restores: database properties (SET clauses, comparison) and the
scratch bookkeeping (names, spool files of dead processes, a full disk)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pgvault.errors import StorageError
from pgvault.operations.logical import dbprops
from pgvault.operations.logical.scratch import (
    Identity,
    SpoolFile,
    process_alive,
    process_start,
    scratch_name,
    sweep_files,
)
from pgvault.repository.manifest import DatabaseProperties, Grant


@pytest.mark.parametrize(("value", "parts"), [
    ('"$user", public', ["$user", "public"]),
    ("app,public", ["app", "public"]),
    ('"Odd Schema", "with ""quote"""', ["Odd Schema", 'with "quote"']),
    ('""', [""]),
    ("", []),
    ('"unterminated', None),
    ("a b", None),
])
def test_split_guc_list_follows_postgresql(value: str, parts: list[str] | None) -> None:
    assert dbprops.split_guc_list(value) == parts


def test_set_clause_splits_only_list_quoted_settings() -> None:
    assert dbprops.set_clause('search_path="$user", "Odd Schema"').as_string(None) == \
        """SET "search_path" TO '$user', 'Odd Schema'"""
    # Not a list-quoted setting: one literal, commas and all (DateStyle takes 'ISO, MDY').
    assert dbprops.set_clause("datestyle=ISO, MDY").as_string(None) == """SET "datestyle" TO 'ISO, MDY'"""
    assert dbprops.set_clause("app.note=it's=fine").as_string(None) == """SET "app.note" TO 'it''s=fine'"""


def _props(**kw: object) -> DatabaseProperties:
    base: dict[str, object] = dict(
        owner="app", acl=(Grant("app", "CONNECT"), Grant("app", "CREATE"), Grant("reader", "CONNECT"), Grant(None, "TEMPORARY")),
        comment="c", connection_limit=5, settings=("work_mem=8MB",),
        role_settings=(("reader", ("statement_timeout=5s",)), ("gone", ("work_mem=1MB",))),
    )
    base.update(kw)
    return DatabaseProperties(**base)  # type: ignore[arg-type]


def test_compare_finds_each_difference() -> None:
    want = _props()
    assert dbprops.compare(want, want, {}) == []
    got = _props(owner="postgres", acl=want.acl + (Grant(None, "CONNECT"),), comment=None, connection_limit=-1,
                 settings=(), role_settings=())
    problems = dbprops.compare(want, got, {})
    assert [p.split(":")[0] for p in problems] == [
        "owner", "privileges", "comment", "connection_limit", "settings", "settings of role reader", "settings of role gone"]
    assert "PUBLIC:CONNECT" in problems[1]  # the REVOKE CONNECT FROM PUBLIC that came back


def test_compare_leaves_out_what_was_skipped() -> None:
    want = _props()
    # 'gone' does not exist on the target; the owner could not be set (its privileges went to postgres).
    got = _props(owner="postgres", acl=(Grant("postgres", "CONNECT"), Grant("postgres", "CREATE"), Grant("reader", "CONNECT"),
                                        Grant(None, "TEMPORARY")), role_settings=(("reader", ("statement_timeout=5s",)),))
    skipped = {"owner": "role 'app' does not exist here", "settings of role gone": "role 'gone' does not exist here"}
    assert dbprops.compare(want, got, skipped) == []
    assert dbprops.compare(want, got, {}) != []


def test_outcome_separates_what_was_asked_from_warnings() -> None:
    o = dbprops.Outcome()
    o.skip("owner", "--no-owner", asked=True)
    o.skip("settings of role gone", "role 'gone' does not exist here")
    assert o.warnings == ["settings of role gone not restored: role 'gone' does not exist here"]
    assert set(o.to_json()["skipped"]) == {"owner", "settings of role gone"}
    assert "older pgvault" in dbprops.Outcome(recorded=False).warnings[0]


def test_scratch_names_fit_in_a_postgresql_identifier() -> None:
    long = "é" * 60
    for name in (scratch_name(long), scratch_name(long, old=True)):
        assert len(name.encode()) <= 63
    assert scratch_name("app").startswith("app_pgvault_") and "_pgvault_old_" in scratch_name("app", old=True)


def _me(pid: int | None = None) -> Identity:
    pid = os.getpid() if pid is None else pid
    return Identity("host-1", pid, process_start(pid) or 0, 1, "0")


def test_process_identity_survives_pid_reuse() -> None:
    me = _me()
    assert process_alive(me.pid, me.started)
    assert not process_alive(me.pid, me.started + 1)  # same pid, another process
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert not process_alive(int(dead.stdout), 0)


def test_sweep_files_removes_only_dead_processes_spools_of_this_host(tmp_path: Path) -> None:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = Identity("host-1", int(child.stdout), 12345, 1, "0")
    mine = SpoolFile(_me(), "restore", str(tmp_path), ".dump")
    theirs = SpoolFile(dead, "restore", str(tmp_path), ".dump")
    listing = SpoolFile(dead, "toc", str(tmp_path), ".list")
    other_host = SpoolFile(Identity("host-2", dead.pid, 12345, 1, "0"), "restore", str(tmp_path), ".dump")
    unrelated = tmp_path / "pgvault-restore-old-style.dump"
    unrelated.write_bytes(b"x")
    for f in (mine, theirs, listing, other_host):
        f.close()
    swept = sweep_files(str(tmp_path), _me())
    assert sorted(swept) == sorted([f"file {theirs.path}", f"file {listing.path}"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [Path(mine.path).name, Path(other_host.path).name, unrelated.name])
    assert oct(os.stat(mine.path).st_mode & 0o777) == "0o600"


def test_a_full_disk_is_a_storage_error_naming_the_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = SpoolFile(_me(), "restore", str(tmp_path), ".dump", needed=5000)
    spool.write(b"a" * 100)

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(StorageError) as raised:
        spool.write(b"b" * 100)
    monkeypatch.undo()
    assert raised.value.message.startswith(f"disk full in {tmp_path} after writing 100 bytes")
    assert "--scratch-dir" in (raised.value.hint or "") and "5000 bytes" in (raised.value.hint or "")
    spool.remove()
    assert not Path(spool.path).exists()
