"""The one runner of PostgreSQL programs (pg/runner.py): what it guarantees with real processes
(bounded, redacted stderr; timeouts and interruptions kill; run-as-owner), and verbs given a fake
one through the Context (tests/support/fake_runner.py)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pyrage
import pytest

from pgvault.config import Settings
from pgvault.errors import ToolError
from pgvault.operations.context import Context
from pgvault.operations.logical import backup
from pgvault.operations.maintenance import drill
from pgvault.pg.bindir import BinDir
from pgvault.pg.conn import ConnInfo
from pgvault.pg.runner import Runner, Spawned
from pgvault.pipeline import read_stream
from pgvault.repository.drills import Check
from pgvault.storage.memory import MemoryStorage
from support.fake_runner import FakeRunner, Script

SECRET = "hunter2-not-in-argv"


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@dataclass(frozen=True)
class _Recording(Runner):
    """The real runner, remembering what it started."""

    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def spawn(self, argv: Sequence[str], *, env: Mapping[str, str] | None, stdin: int | IO[bytes],
              stdout: int, cwd: Path | None) -> Spawned:
        p = super().spawn(argv, env=env, stdin=stdin, stdout=stdout, cwd=cwd)
        assert isinstance(p, subprocess.Popen)
        self.started.append(p)
        return p


# --- the runner itself, with real processes ------------------------------------------------------


def test_stderr_is_a_redacted_bounded_tail_and_a_failure_quotes_its_end() -> None:
    script = f"for i in $(seq 1 500); do echo line $i >&2; done; echo 'auth failed for {SECRET}' >&2; exit 3"
    proc = Runner().start("sh", ["-c", script], env={"PATH": os.environ["PATH"], "PGPASSWORD": SECRET})
    with pytest.raises(ToolError) as e:
        proc.check("(test)")
    lines = proc.stderr_text().splitlines()
    assert len(lines) == 40 and lines[0] == "line 462"  # the last lines only, however much was written
    assert "auth failed for <redacted>" in e.value.message and SECRET not in e.value.message
    assert e.value.message.startswith("sh (test) failed with exit status 3: line 497 | ")


def test_run_returns_stdout_and_status_and_runs_where_told(tmp_path: Path) -> None:
    r = Runner().run("sh", ["-c", "pwd; echo oops >&2; exit 4"], env=None, cwd=tmp_path)
    assert (r.ok, r.returncode, r.stdout.strip(), r.stderr, r.detail()) == (False, 4, str(tmp_path), "oops", "oops")


def test_a_timeout_kills_the_program_and_is_a_tool_error() -> None:
    runner = _Recording()
    with pytest.raises(ToolError, match=r"sleep did not finish within 0.3s \(killed\)"):
        runner.run("sleep", ["30"], env=None, timeout=0.3)
    assert not _alive(runner.started[0].pid)


def test_an_interrupted_wait_kills_the_program_and_goes_on_unwinding() -> None:
    """SIGTERM raises in the main thread (cli/interrupts.py): no program may outlive the call."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    runner = _Recording()
    old = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.3)
    try:
        with pytest.raises(KeyboardInterrupt):
            runner.run("sleep", ["30"], env=None)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert not _alive(runner.started[0].pid)


def test_a_missing_program_is_a_tool_error(tmp_path: Path) -> None:
    bindir = BinDir(tmp_path, 17, "17.0")
    with pytest.raises(ToolError, match=rf"cannot run {tmp_path}/pg_dump: No such file"):
        Runner().using(bindir).start("pg_dump", [], env={})


@pytest.mark.parametrize("euid", [0, 1000])
def test_as_user_goes_through_runuser_only_as_root(monkeypatch: pytest.MonkeyPatch, euid: int) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: euid)
    fake = FakeRunner(programs={"pg_ctl": Script()}).using(BinDir(Path("/pg/17/bin"), 17, "17.0"))
    assert isinstance(fake, FakeRunner)
    fake.run("pg_ctl", ["status"], env={}, as_user="postgres")
    expected = ["/pg/17/bin/pg_ctl", "status"]
    assert fake.calls[0].argv == (["runuser", "-u", "postgres", "--", *expected] if euid == 0 else expected)


# --- verbs given a fake runner through the context -----------------------------------------------

IDENTITY = pyrage.x25519.Identity.generate()
BINDIR = BinDir(Path("/usr/lib/postgresql/17/bin"), 17, "17.4")


@pytest.fixture
def storage() -> Iterator[MemoryStorage]:
    yield MemoryStorage("runner")


def _ctx(storage: MemoryStorage, runner: Runner) -> Context:
    settings = Settings(cluster="main", repository_url="memory://runner", dsn=f"host=db.example password={SECRET}",
                        age_recipients=(str(IDENTITY.to_public()),), age_identity=str(IDENTITY))
    return Context(settings=settings, storage=storage, conn=ConnInfo.from_dsn(settings.dsn, {}), runner=runner,
                   environ={"PATH": "/usr/bin"})


def test_logical_backup_stores_what_pg_dumpall_wrote_compressed_and_encrypted(storage: MemoryStorage) -> None:
    dump = b"".join(b"CREATE ROLE role_%d;\n" % i for i in range(5000))
    fake = FakeRunner(programs={"pg_dumpall": Script(stdout=dump)})
    ctx = _ctx(storage, fake)
    spec = ctx.settings.pipeline()
    obj = backup._dump_globals(ctx, ctx.runner.using(BINDIR), "main/logical/B1/", spec, superuser=False)

    [call] = fake.started("pg_dumpall")
    # Non-superusers cannot read role passwords; the server's password goes by environment only.
    assert call.argv == [str(BINDIR.path / "pg_dumpall"), "--globals-only", "--no-password", "--no-role-passwords"]
    assert call.env is not None and call.env["PGPASSWORD"] == SECRET and call.env["PGHOST"] == "db.example"
    assert not call.killed
    stored = storage.read_bytes("main/logical/B1/" + obj.key)
    assert b"CREATE ROLE" not in stored and len(stored) < len(dump) // 4
    out = io.BytesIO()
    read_stream(io.BytesIO(stored), out, spec, identities=ctx.identities(), expected=obj.result)
    assert out.getvalue() == dump and obj.result.raw_size == len(dump)


def test_a_failed_pg_dumpall_stores_nothing_and_its_error_carries_no_password(storage: MemoryStorage) -> None:
    err = f'pg_dumpall: error: connection to server at "db.example" failed: password "{SECRET}" rejected\n'
    fake = FakeRunner(programs={"pg_dumpall": Script(stdout=b"-- half a dump\n", stderr=err.encode(), returncode=1)})
    ctx = _ctx(storage, fake)
    with pytest.raises(ToolError) as e:
        backup._dump_globals(ctx, ctx.runner.using(BINDIR), "main/logical/B1/", ctx.settings.pipeline(),
                             superuser=True)
    assert e.value.message == ('pg_dumpall failed with exit status 1: pg_dumpall: error: connection to server at '
                               '"db.example" failed: password "<redacted>" rejected')
    assert list(storage.list("")) == []  # the object was aborted, not committed
    assert "--no-role-passwords" not in fake.calls[0].argv


def _amcheck(tmp_path: Path, script: Script) -> tuple[list[Check], FakeRunner]:
    (tmp_path / "pg_amcheck").touch()
    fake = FakeRunner(programs={"pg_amcheck": script})
    ctx = _ctx(MemoryStorage("amcheck"), fake)
    info = ConnInfo({"host": str(tmp_path), "port": "54321", "user": "postgres", "dbname": "postgres",
                     "password": SECRET})
    checks: list[Check] = []
    drill._amcheck(ctx, BinDir(tmp_path, 17, "17.4"), info, checks)
    return checks, fake


def test_the_drills_amcheck_reports_the_first_findings_of_a_corrupt_cluster(tmp_path: Path) -> None:
    findings = "".join(f'heap table "postgres.public.t", block {i}, offset 1:\n    line pointer corrupt\n'
                       for i in range(10))
    checks, fake = _amcheck(tmp_path, Script(stdout=findings.encode(), stderr=b"pg_amcheck: warning\n", returncode=2))
    [check] = checks
    assert (check.name, check.ok) == ("pg_amcheck", False)
    # pg_amcheck's findings are on stdout, first things first (stderr's warning comes after).
    assert check.detail == ('exit 2: heap table "postgres.public.t", block 0, offset 1: |     line pointer corrupt | '
                            'heap table "postgres.public.t", block 1, offset 1: |     line pointer corrupt | '
                            'heap table "postgres.public.t", block 2, offset 1:')
    [call] = fake.calls
    assert call.argv == [str(tmp_path / "pg_amcheck"), "--all", "--install-missing", "--heapallindexed"]
    assert call.env is not None and call.env["PGPASSWORD"] == SECRET and call.env["PGPORT"] == "54321"


def test_the_drills_amcheck_passes_a_clean_cluster_and_skips_when_not_installed(tmp_path: Path) -> None:
    checks, _ = _amcheck(tmp_path, Script())
    assert [(c.ok, c.detail) for c in checks] == [(True, "no corruption found (heap and every B-tree index)")]
    (tmp_path / "pg_amcheck").unlink()
    checks = []
    drill._amcheck(_ctx(MemoryStorage("x"), FakeRunner()), BinDir(tmp_path, 17, "17.4"), ConnInfo({}), checks)
    assert [(c.ok, c.detail) for c in checks] == [(True, f"skipped: {tmp_path / 'pg_amcheck'} is not installed")]


def test_the_context_runner_is_the_real_one_by_default_imported_on_first_use() -> None:
    code = (
        "import sys\n"
        "from pgvault.config import Settings\n"
        "from pgvault.operations.context import Context\n"
        "from pgvault.pg.conn import ConnInfo\n"
        "from pgvault.storage.memory import MemoryStorage\n"
        "ctx = Context(settings=Settings(cluster='c', repository_url='memory://d'), storage=MemoryStorage('d'),"
        " conn=ConnInfo({}))\n"
        "before = 'pgvault.pg.runner' in sys.modules\n"  # wal push makes a Context and runs no program
        "from pgvault.pg.runner import Runner\n"
        "bound = ctx.runner.using(None)\n"
        "print(before, type(bound) is Runner, ctx.runner.output(sys.executable, ['-c', 'print(1)'], env=None).strip())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True", "1"]
