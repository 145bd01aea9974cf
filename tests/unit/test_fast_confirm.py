"""``wal push``'s fast path (pgvault.entry + operations/archive/confirm.py, issue 12): it confirms a
segment from the background pusher's record without loading the CLI, and only when the record
vouches for exactly the bytes at %p; anything else goes to the full command."""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pgvault import entry
from pgvault.config import SETTINGS
from pgvault.operations.archive import confirm

NAME = "000000010000000000000007"
SRC = Path(__file__).resolve().parents[2] / "src"


class Spool:
    """A data directory with one ``.ready`` segment and a spool remembered for fingerprint ``fp``."""

    def __init__(self, root: Path) -> None:
        self.data = root / "pgdata"
        (self.data / "pg_wal" / "archive_status").mkdir(parents=True)
        self.seg = self.data / "pg_wal" / NAME
        self.seg.write_bytes(os.urandom(64 * 1024))
        (self.data / "pg_wal" / "archive_status" / f"{NAME}.ready").touch()
        self.spool = root / "spool"
        (self.spool / "archive").mkdir(parents=True)
        self.ok = self.spool / "archive" / f"{NAME}.ok"
        self.fp = "f" * 32
        confirm.remember(str(self.data), self.fp, str(self.spool), 4.0)

    def record(self, *, vouch: bool = True, sha: str | None = None) -> None:
        """The pusher's record of the segment as it is now; ``vouch``: as if the pusher read it
        long after it was last written (so its identity may stand for the bytes)."""
        st = os.stat(self.seg)
        read_from = time.time_ns() + (confirm.RACY_NS + 10**9 if vouch else 0)
        fid = confirm.vouched_identity(st, os.stat(self.seg), read_from)
        assert (fid is not None) == vouch
        data = self.seg.read_bytes()
        self.ok.write_bytes(confirm.format_record(raw_sha256=sha or hashlib.sha256(data).hexdigest(), raw_size=len(data),
                                                  key=f"k/{NAME}.zst.age", stored_size=10, already_archived=False,
                                                  file_id=fid))

    def confirm(self, **kw: float) -> confirm.Record | None:
        return confirm.fast_confirm(f"pg_wal/{NAME}", data_dir=str(self.data), fp=self.fp, **kw)  # type: ignore[arg-type]

    def hold_pusher_lock(self) -> int:
        fd = os.open(self.spool / "pusher.lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd


@pytest.fixture
def sp(tmp_path: Path) -> Spool:
    return Spool(tmp_path)


def _rewrite_in_place(path: Path) -> None:
    """Different bytes, same size, same inode (what an in-place overwrite does)."""
    time.sleep(0.03)  # past the file system's timestamp granule, as any later write would be
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    with open(path, "r+b") as f:
        f.write(data)


# --- the record and what it vouches for ------------------------------------------------------------


def test_a_record_confirms_the_bytes_it_was_made_for_and_is_consumed(sp: Spool) -> None:
    sp.record()
    r = sp.confirm()
    assert r is not None and r.key == f"k/{NAME}.zst.age" and r.raw_size == 64 * 1024
    assert not sp.ok.exists()


def test_a_segment_rewritten_after_its_record_is_not_confirmed(sp: Spool) -> None:
    sp.record()  # its identity vouches for the bytes: confirming it would not read the file
    _rewrite_in_place(sp.seg)
    assert sp.confirm() is None
    assert sp.ok.exists()  # left for the full command, which compares with the repository


def test_a_rewrite_with_its_mtime_set_back_is_not_confirmed(sp: Spool) -> None:
    st = os.stat(sp.seg)
    sp.record()
    _rewrite_in_place(sp.seg)
    os.utime(sp.seg, ns=(st.st_atime_ns, st.st_mtime_ns))  # utime can set mtime back, never ctime
    assert sp.confirm() is None


def test_a_replaced_file_with_the_same_bytes_is_hashed_and_confirmed(sp: Spool) -> None:
    sp.record()
    data = sp.seg.read_bytes()
    sp.seg.unlink()
    sp.seg.write_bytes(data)
    assert sp.confirm() is not None


def test_a_replaced_file_with_other_bytes_is_not_confirmed(sp: Spool) -> None:
    sp.record()
    sp.seg.unlink()
    sp.seg.write_bytes(os.urandom(64 * 1024))
    assert sp.confirm() is None


def test_a_racily_written_file_is_hashed_not_trusted(sp: Spool) -> None:
    """Written moments before the pusher read it: a write in the same timestamp granule would
    leave its identity unchanged, so the record carries none and the bytes are compared."""
    sp.record(vouch=False)
    assert confirm.read_record(str(sp.ok)).file_id is None  # type: ignore[union-attr]
    assert sp.confirm() is not None
    sp.record(vouch=False, sha="0" * 64)  # a stale record of other bytes
    assert sp.confirm() is None


def test_vouched_identity_needs_an_unchanged_old_file(sp: Spool) -> None:
    before = os.stat(sp.seg)
    far = time.time_ns() + confirm.RACY_NS + 10**9
    assert confirm.vouched_identity(before, os.stat(sp.seg), far) == confirm.identity(before)
    assert confirm.vouched_identity(before, os.stat(sp.seg), time.time_ns()) is None  # just written
    _rewrite_in_place(sp.seg)
    assert confirm.vouched_identity(before, os.stat(sp.seg), far) is None  # changed during the push


def test_a_damaged_record_confirms_nothing(sp: Spool) -> None:
    sp.ok.write_text('{"raw_sha256": "x"}')  # e.g. an older pusher's JSON record
    assert confirm.read_record(str(sp.ok)) is None
    assert sp.confirm() is None


def test_a_record_field_with_a_newline_is_refused() -> None:
    with pytest.raises(ValueError):
        confirm.format_record(raw_sha256="0" * 64, raw_size=1, key="a\nfile_id 1", stored_size=1,
                              already_archived=False, file_id=None)


# --- when the fast path steps aside ----------------------------------------------------------------


def test_no_pusher_means_the_full_command_at_once(sp: Spool) -> None:
    t0 = time.monotonic()
    assert sp.confirm() is None
    assert time.monotonic() - t0 < 0.5


def test_it_waits_for_a_running_pusher_and_takes_its_record(sp: Spool) -> None:
    fd = sp.hold_pusher_lock()
    try:
        threading.Timer(0.2, sp.record).start()
        t0 = time.monotonic()
        assert sp.confirm() is not None
        assert 0.15 < time.monotonic() - t0 < 1.5
    finally:
        os.close(fd)


def test_a_pusher_that_dies_while_waited_for_means_the_full_command(sp: Spool) -> None:
    fd = sp.hold_pusher_lock()
    threading.Timer(0.2, os.close, (fd,)).start()
    t0 = time.monotonic()
    assert sp.confirm() is None
    assert time.monotonic() - t0 < 0.2 + confirm.LOCK_CHECK + 0.5


def test_an_error_record_or_a_long_wait_means_the_full_command(sp: Spool) -> None:
    fd = sp.hold_pusher_lock()
    try:
        (sp.spool / "archive" / f"{NAME}.error").write_text('{"kind": "storage", "message": "x"}')
        assert sp.confirm() is None
        (sp.spool / "archive" / f"{NAME}.error").unlink()
        t0 = time.monotonic()
        assert sp.confirm() is None  # half of the remembered archive.wait_timeout (4 s)
        assert 1.9 < time.monotonic() - t0 < 3.5
    finally:
        os.close(fd)


def test_a_file_not_marked_ready_or_nothing_remembered_means_the_full_command(sp: Spool) -> None:
    sp.record()
    assert confirm.fast_confirm(f"pg_wal/{NAME}", data_dir=str(sp.data), fp="0" * 32) is None
    (sp.data / "pg_wal" / "archive_status" / f"{NAME}.ready").rename(sp.data / "pg_wal" / "archive_status" / f"{NAME}.done")
    assert sp.confirm() is None
    assert sp.ok.exists()


# --- what the spool is remembered under -------------------------------------------------------------


def _fp(tmp_path: Path, **kw: object) -> str | None:
    args: dict[str, object] = {"config": None, "cluster": None, "repository": None, "pgdata": None,
                               "cwd": str(tmp_path), "environ": {}}
    args.update(kw)
    return confirm.fingerprint(**args)  # type: ignore[arg-type]


def test_the_fingerprint_follows_every_input_that_decides_the_spool(tmp_path: Path) -> None:
    conf = tmp_path / "pgvault.yaml"
    conf.write_text("repository:\n  url: /a\n")
    env = {"PGVAULT_CONFIG": str(conf)}
    base = _fp(tmp_path, environ=env)
    assert base == _fp(tmp_path, environ=env)
    assert base != _fp(tmp_path, environ={**env, "PGVAULT_CLUSTER": "other"})
    assert base != _fp(tmp_path, environ={**env, "PGVAULT_REPOSITORIES_DR_URL": "s3://b/x"})
    assert base != _fp(tmp_path, environ=env, cluster="x")
    assert base != _fp(tmp_path, environ=env, repository="dr")
    assert base != _fp(tmp_path, environ=env, pgdata="/elsewhere")
    assert base != _fp(tmp_path / "sub", environ=env)
    conf.write_text("repository:\n  url: /b\n")  # same path, other content
    assert base != _fp(tmp_path, environ=env)
    # Secrets and settings that do not decide the spool are not part of it.
    conf.write_text("repository:\n  url: /a\n")
    assert base == _fp(tmp_path, environ={**env, "PGVAULT_POSTGRES_DSN": "password=secret",
                                          "PGVAULT_ENCRYPTION_AGE_IDENTITY": "AGE-SECRET-KEY-1X"})
    assert _fp(tmp_path, config=str(tmp_path / "missing.yaml")) is None


def test_the_fingerprint_covers_the_settings_the_spool_depends_on() -> None:
    """background.spool_dir reads repository.url, cluster and archive.spool_dir; wal push goes
    async on archive.async and waits archive.wait_timeout; --repository NAME reads repositories.*."""
    env = {s.path: s.env for s in SETTINGS}
    for path in ("repository.url", "cluster", "archive.spool_dir", "archive.async", "archive.wait_timeout"):
        assert env[path] in confirm.SPOOL_ENV, path
    assert confirm.NAMED_REPOSITORIES_ENV == "PGVAULT_REPOSITORIES_"


# --- the command line -------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, expected", [
    (["wal", "push", "pg_wal/X"], {"path": "pg_wal/X"}),
    (["wal", "push", "pg_wal/X", "--pgdata", "/d"], {"path": "pg_wal/X", "pgdata": "/d"}),
    (["--config", "/c.yaml", "wal", "push", "p"], {"path": "p", "config": "/c.yaml"}),
    (["wal", "push", "-c", "/c", "--cluster=main", "-r", "dr", "p"],
     {"path": "p", "config": "/c", "cluster": "main", "repository": "dr"}),
])
def test_the_command_lines_the_fast_path_reads(argv: list[str], expected: dict[str, str]) -> None:
    assert entry.parse_push(argv) == {"config": None, "cluster": None, "repository": None, "pgdata": None, **expected}


@pytest.mark.parametrize("argv", [
    ["wal", "push", "p", "--json"], ["wal", "push", "p", "--log-level", "debug"], ["wal", "push", "p", "--clus", "x"],
    ["wal", "push", "p", "--cluster", "a", "--cluster", "b"], ["wal", "push", "p", "-c=/x"],
    ["--pgdata", "/d", "wal", "push", "p"], ["wal", "push"], ["wal", "push", "p", "q"], ["wal", "fetch", "a", "b"],
    ["wal", "push", "p", "--cluster"], ["wal", "push", "p", "--cluster", "-x"], ["push", "wal", "p"],
])
def test_other_command_lines_go_to_the_full_command(argv: list[str]) -> None:
    assert entry.parse_push(argv) is None


def test_the_fast_path_prints_what_the_full_command_prints(sp: Spool, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(sp.data)
    for k in list(os.environ):
        if k.startswith("PGVAULT_"):
            monkeypatch.delenv(k)
    fp = confirm.fingerprint(config=None, cluster="c1", repository=None, pgdata=None, cwd=str(sp.data), environ={})
    assert fp
    confirm.remember(str(sp.data), fp, str(sp.spool), 4.0)
    sp.record()
    assert entry.fast_push(["wal", "push", f"pg_wal/{NAME}", "--cluster", "c1"]) == 0
    assert capsys.readouterr().out == f"{NAME}: archived as k/{NAME}.zst.age\n"
    assert entry.fast_push(["wal", "push", f"pg_wal/{NAME}", "--cluster", "c2"]) is None  # nothing remembered


def test_the_fast_path_imports_no_more_than_it_needs(sp: Spool) -> None:
    """The point of it: no argparse, config, YAML, pipeline, json or pathlib on the confirming path
    (beyond what this interpreter's start-up imports anyway)."""
    fp = confirm.fingerprint(config=None, cluster=None, repository=None, pgdata=None, cwd=str(sp.data), environ={})
    assert fp
    confirm.remember(str(sp.data), fp, str(sp.spool), 4.0)
    sp.record()
    heavy = ("argparse", "yaml", "json", "pathlib", "re", "typing", "hashlib", "pgvault.cli", "pgvault.config",
             "pgvault.pipeline")
    code = (f"import sys; before = set(sys.modules); from pgvault.entry import main; rc = main(); "
            f"print(rc, sorted(m for m in {heavy!r} if m in sys.modules and m not in before), file=sys.stderr)")
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-c", code, "wal", "push", f"pg_wal/{NAME}"],
                         cwd=sp.data, env=env, capture_output=True, text=True, check=False)
    assert out.stderr.strip().endswith("0 []"), out
    assert not sp.ok.exists()
