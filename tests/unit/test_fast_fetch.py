"""``wal fetch``'s fast path (pgvault.entry + operations/archive/prefetched.py, issue 12): a segment
the prefetcher downloaded, verified and recorded is moved to %p without loading the CLI; anything
else (no record, a file changed or replaced since, no prefetcher running, a file that is not a
segment, an unexpected error) goes to the full command, which alone answers "not found"."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pgvault import entry
from pgvault.config import SETTINGS
from pgvault.operations.archive import background, confirm, prefetched
from pgvault.pg import wal

NAME = "000000010000000000000007"
SRC = Path(__file__).resolve().parents[2] / "src"


class Restoring:
    """A data directory in recovery, and a fetch spool remembered for fingerprint ``fp`` in which a
    running prefetcher (its lock held) downloaded segment NAME."""

    def __init__(self, root: Path) -> None:
        self.data = root / "pgdata"
        (self.data / "pg_wal").mkdir(parents=True)
        self.dest = self.data / "pg_wal" / "RECOVERYXLOG"
        self.spool = root / "spool" / "fetch"
        self.spool.mkdir(parents=True)
        self.seg = self.spool / NAME
        self.bytes = os.urandom(64 * 1024)
        self.seg.write_bytes(self.bytes)  # as fs.atomic_file leaves it: complete, verified, renamed
        self.fp = "e" * 32
        confirm.remember(str(self.data), self.fp, str(self.spool), 0.0)
        self.lock_fd: int | None = None

    def record(self) -> None:
        import hashlib

        prefetched.write_record(str(self.spool), NAME, raw_sha256=hashlib.sha256(self.bytes).hexdigest(),
                                raw_size=len(self.bytes))

    def hold_lock(self) -> None:
        self.lock_fd = os.open(self.spool / "prefetch.lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def serve(self, name: str = NAME) -> bool:
        return prefetched.serve(name, "pg_wal/RECOVERYXLOG", data_dir=str(self.data), fp=self.fp)

    def close(self) -> None:
        if self.lock_fd is not None:
            os.close(self.lock_fd)


@pytest.fixture
def rs(tmp_path: Path):  # type: ignore[no-untyped-def]
    r = Restoring(tmp_path)
    r.hold_lock()
    yield r
    r.close()


def _not_served(rs: Restoring) -> None:
    assert not rs.dest.exists()


# --- what is handed over ----------------------------------------------------------------------------


def test_a_recorded_segment_is_moved_to_p_byte_for_byte_and_consumed(rs: Restoring) -> None:
    rs.record()
    assert rs.serve()
    assert rs.dest.read_bytes() == rs.bytes
    assert not rs.seg.exists() and not Path(prefetched.record_path(str(rs.spool), NAME)).exists()
    assert (rs.spool / ".want").read_text() == NAME  # the prefetcher moves on
    assert not rs.serve()  # consumed: a second ask goes to the full command


def test_a_file_without_the_prefetchers_record_is_never_handed_over(rs: Restoring) -> None:
    """E.g. a file put there by hand, or one whose download was verified by no one."""
    assert not rs.serve()
    _not_served(rs)
    assert rs.seg.exists()


def test_a_partial_download_has_no_name_and_is_never_handed_over(rs: Restoring) -> None:
    rs.record()
    rs.seg.rename(rs.spool / f".{NAME}.abc123.tmp")  # where fs.atomic_file writes before the checksums matched
    assert not rs.serve()
    _not_served(rs)


def test_a_segment_changed_after_its_record_is_not_handed_over(rs: Restoring) -> None:
    rs.record()
    os.utime(rs.seg, ns=(0, 0))  # any write changes mtime/ctime; this changes them without one
    assert not rs.serve()
    _not_served(rs)


def test_a_segment_replaced_after_its_record_is_not_handed_over(rs: Restoring) -> None:
    rs.record()
    rs.seg.unlink()
    rs.seg.write_bytes(os.urandom(64 * 1024))
    assert not rs.serve()
    _not_served(rs)


def test_a_damaged_record_hands_over_nothing(rs: Restoring) -> None:
    rs.record()
    path = Path(prefetched.record_path(str(rs.spool), NAME))
    path.write_text(path.read_text().replace("file_id ", "file_id 1 "))
    assert prefetched.read_record(str(rs.spool), NAME) is None
    path.write_text("raw_size 65536\n")
    assert prefetched.read_record(str(rs.spool), NAME) is None
    assert not rs.serve()
    _not_served(rs)


def test_the_prefetcher_refuses_to_record_a_file_of_another_size(rs: Restoring) -> None:
    with pytest.raises(ValueError):
        prefetched.write_record(str(rs.spool), NAME, raw_sha256="0" * 64, raw_size=len(rs.bytes) + 1)


# --- when the fast path steps aside ------------------------------------------------------------------


def test_no_running_prefetcher_means_the_full_command(tmp_path: Path) -> None:
    """A file left by a killed prefetcher (of an earlier recovery) is never served: only while a
    prefetcher holds the lock, and each one clears the spool when it starts."""
    r = Restoring(tmp_path)
    r.record()
    assert not r.serve()
    _not_served(r)


def test_a_starting_prefetcher_clears_what_an_earlier_one_left(rs: Restoring) -> None:
    rs.record()
    other = "000000010000000000000008"
    (rs.spool / other).write_bytes(b"x")
    (rs.spool / ".want").write_text(NAME)
    background._clear(rs.spool, {other})
    assert sorted(p.name for p in rs.spool.iterdir()) == sorted([".want", "prefetch.lock", other])
    background._clear(rs.spool)
    assert sorted(p.name for p in rs.spool.iterdir()) == [".want", "prefetch.lock"]


def test_history_files_and_other_names_go_to_the_full_command(rs: Restoring) -> None:
    for name in ("00000002.history", "000000010000000000000007.partial", "RECOVERYHISTORY", "0" * 23 + "g",
                 "../" + NAME[3:]):
        assert not prefetched.is_segment_name(name)
        assert not rs.serve(name)
    assert prefetched.is_segment_name(NAME)
    assert wal.classify_or_none(NAME) is wal.WalFileKind.SEGMENT


def test_nothing_remembered_means_the_full_command(rs: Restoring) -> None:
    rs.record()
    assert not prefetched.serve(NAME, "pg_wal/RECOVERYXLOG", data_dir=str(rs.data), fp="0" * 32)
    _not_served(rs)


# --- the command line ---------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, expected", [
    (["wal", "fetch", NAME, "pg_wal/RECOVERYXLOG"], {"name": NAME, "destination": "pg_wal/RECOVERYXLOG"}),
    (["wal", "fetch", "a", "b", "--pgdata", "/d"], {"name": "a", "destination": "b", "pgdata": "/d"}),
    (["-c", "/c", "wal", "fetch", "--cluster=x", "a", "b"], {"name": "a", "destination": "b", "config": "/c",
                                                             "cluster": "x"}),
])
def test_the_fetch_command_lines_the_fast_path_reads(argv: list[str], expected: dict[str, str]) -> None:
    assert entry.parse_fetch(argv) == {"config": None, "cluster": None, "repository": None, "pgdata": None,
                                       **expected}


@pytest.mark.parametrize("argv", [
    ["wal", "fetch", "a"], ["wal", "fetch", "a", "b", "c"], ["wal", "fetch", "a", "b", "--json"],
    ["wal", "push", "a"], ["wal", "fetch", "a", "b", "--log-level", "debug"], ["fetch", "wal", "a", "b"],
])
def test_other_fetch_command_lines_go_to_the_full_command(argv: list[str]) -> None:
    assert entry.parse_fetch(argv) is None


def _remember_for_cwd(rs: Restoring, monkeypatch: pytest.MonkeyPatch, cluster: str) -> None:
    monkeypatch.chdir(rs.data)
    for k in list(os.environ):
        if k.startswith("PGVAULT_"):
            monkeypatch.delenv(k)
    fp = confirm.fingerprint(config=None, cluster=cluster, repository=None, pgdata=None, cwd=str(rs.data),
                             environ={}, verb="fetch")
    assert fp
    confirm.remember(str(rs.data), fp, str(rs.spool), 0.0)


def test_the_fast_path_serves_silently_like_the_full_command(rs: Restoring, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    _remember_for_cwd(rs, monkeypatch, "c1")
    rs.record()
    assert entry.fast_fetch(["wal", "fetch", NAME, "pg_wal/RECOVERYXLOG", "--cluster", "c2"]) is None  # not remembered
    assert entry.fast_fetch(["wal", "fetch", NAME, "pg_wal/RECOVERYXLOG", "--cluster", "c1"]) == 0
    assert capsys.readouterr() == ("", "")
    assert rs.dest.read_bytes() == rs.bytes


def test_an_unexpected_error_means_the_full_command(rs: Restoring, monkeypatch: pytest.MonkeyPatch) -> None:
    _remember_for_cwd(rs, monkeypatch, "c1")
    rs.record()
    # %p in a directory that does not exist: the rename fails; the full command reports it
    assert entry.fast_fetch(["wal", "fetch", NAME, "nowhere/RECOVERYXLOG", "--cluster", "c1"]) is None
    assert rs.seg.exists()


def test_push_and_fetch_are_remembered_apart(tmp_path: Path) -> None:
    args: dict[str, object] = {"config": None, "cluster": None, "repository": None, "pgdata": None, "cwd": str(tmp_path), "environ": {}}
    push = confirm.fingerprint(**args)  # type: ignore[arg-type]
    fetch = confirm.fingerprint(**args, verb="fetch")  # type: ignore[arg-type]
    assert push and fetch and push != fetch
    assert fetch != confirm.fingerprint(**{**args, "environ": {"PGVAULT_RESTORE_PREFETCH": "0"}}, verb="fetch")  # type: ignore[arg-type]


def test_the_fetch_fingerprint_covers_the_settings_the_fetch_spool_depends_on() -> None:
    env = {s.path: s.env for s in SETTINGS}
    for path in ("repository.url", "cluster", "archive.spool_dir", "restore.prefetch"):
        assert env[path] in confirm.FETCH_ENV, path


def test_the_fast_path_imports_no_more_than_it_needs(rs: Restoring) -> None:
    fp = confirm.fingerprint(config=None, cluster=None, repository=None, pgdata=None, cwd=str(rs.data), environ={},
                             verb="fetch")
    assert fp
    confirm.remember(str(rs.data), fp, str(rs.spool), 0.0)
    rs.record()
    heavy = ("argparse", "yaml", "json", "pathlib", "re", "typing", "hashlib", "pgvault.cli", "pgvault.config",
             "pgvault.pipeline", "pgvault.storage")
    code = (f"import sys; before = set(sys.modules); from pgvault.entry import main; rc = main(); "
            f"print(rc, sorted(m for m in {heavy!r} if m in sys.modules and m not in before), file=sys.stderr)")
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-c", code, "wal", "fetch", NAME, "pg_wal/RECOVERYXLOG"],
                         cwd=rs.data, env=env, capture_output=True, text=True, check=False)
    assert out.stderr.strip().endswith("0 []"), out
    assert rs.dest.read_bytes() == rs.bytes


# --- timeline 1's history file ------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["wal", "fetch", "00000001.history", "pg_wal/RECOVERYHISTORY"],
    ["--cluster", "x", "wal", "fetch", "00000001.history", "RECOVERYHISTORY", "--pgdata", "/nonexistent"],
])
def test_timeline_1s_history_is_not_found_without_the_cli_or_the_repository(argv: list[str],
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert entry.fast_fetch(argv) == 1  # restore_command's "no such file" (pgvault.cli.wal.FETCH_NOT_FOUND)
    assert "00000001.history" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["wal", "fetch", "00000002.history", "pg_wal/RECOVERYHISTORY"],  # any other timeline may have one
    ["wal", "fetch", "00000001.history", "pg_wal/RECOVERYHISTORY", "--json"],  # not the form the fast path reads
    ["wal", "fetch", "00000001.history"],
])
def test_other_history_files_and_command_lines_still_go_to_the_full_command(argv: list[str]) -> None:
    assert entry.fast_fetch(argv) is None


def test_timeline_1s_history_imports_neither_the_cli_nor_a_storage(tmp_path: Path) -> None:
    from pgvault.cli.wal import FETCH_NOT_FOUND

    assert entry.FETCH_NOT_FOUND == FETCH_NOT_FOUND
    code = ("import sys; from pgvault.entry import main; rc = main(); "
            "print(rc, sorted(m for m in sys.modules if m.startswith(('pgvault.cli', 'pgvault.config', "
            "'pgvault.storage', 'pgvault.operations.archive.'))), file=sys.stderr)")
    # No repository, no settings at all: the answer cannot depend on them.
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-c", code, "wal", "fetch", "00000001.history", "pg_wal/RECOVERYHISTORY"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
    assert out.returncode == 0 and out.stderr.strip().endswith("1 []"), out
    assert not (tmp_path / "pg_wal").exists()
