"""A local repository shared by root and the postgres OS user (issue 8, item 6).

The archiver writes as postgres; an operator may run ``basebackup`` or ``restore-cluster`` as
root. Running as root, pgvault gives everything it creates to the owner of the repository root,
so the other side keeps working; not running as root, a permission error says whom to run as.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgvault.errors import StorageError
from pgvault.storage.local import LocalStorage
from support.launcher import _runtime_python
from support.pgcluster import PG_OS_USER, postgres_tmpdir

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as root and as postgres")


@pytest.fixture
def shared(pgvault_launcher: Path) -> Iterator[Path]:
    """A directory owned by postgres, reachable by it."""
    path = postgres_tmpdir("pgvault-owner-")
    shutil.chown(path, PG_OS_USER, PG_OS_USER)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def as_postgres(launcher: Path, code: str) -> subprocess.CompletedProcess[str]:
    """Run Python ``code`` as the postgres OS user with the pgvault under test importable."""
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(launcher.parent / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        ["runuser", "-u", PG_OS_USER, "--", str(_runtime_python()), "-c", textwrap.dedent(code)],
        env=env, capture_output=True, text=True, timeout=120,
    )


POSTGRES_USES_IT = """
    import sys
    from pathlib import Path
    from pgvault.storage.local import LocalStorage
    st = LocalStorage(Path(sys.argv[1] if len(sys.argv) > 1 else {root!r}))
    keys = [i.key for i in st.list()]
    assert keys, keys
    for k in keys:
        st.read_bytes(k)
    with st.open_write("a/b/by-postgres") as w:  # into a directory root made
        w.write(b"p")
    st.put_if_absent("locks/postgres.lock", b"p")
    st.delete("a/b/c")  # an object root wrote
    st.check_writable()
    print("ok")
"""


def owners(root: Path) -> set[tuple[str, int, int]]:
    """(path, uid, gid) of the root and everything below it, including leftover temp files."""
    found = {(str(root), root.stat().st_uid, root.stat().st_gid)}
    for p in root.rglob("*"):
        st = p.lstat()
        found.add((str(p.relative_to(root)), st.st_uid, st.st_gid))
    return found


def _pg_ids() -> tuple[int, int]:
    pw = pwd.getpwnam(PG_OS_USER)
    return pw.pw_uid, pw.pw_gid


def write_as_root(st: LocalStorage) -> None:
    with st.open_write("a/b/c") as w:
        w.write(b"root wrote this")
    with st.open_write("a/b/d", if_absent=True) as w:
        w.write(b"and this")
    st.put_if_absent("locks/root.lock", b"r")
    w2 = st.open_write("x/pending")  # an unfinished write: even its temp file is postgres's
    w2.write(b"...")
    st.check_writable()


def test_root_writes_into_a_postgres_repository_as_postgres(shared: Path, pgvault_launcher: Path) -> None:
    root = shared / "repo"
    root.mkdir()
    shutil.chown(root, PG_OS_USER, PG_OS_USER)
    write_as_root(LocalStorage(root))
    uid, gid = _pg_ids()
    assert {(o[1], o[2]) for o in owners(root)} == {(uid, gid)}, owners(root)
    res = as_postgres(pgvault_launcher, POSTGRES_USES_IT.format(root=str(root)))
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


def test_a_repository_root_creates_belongs_to_its_parent_owner(shared: Path, pgvault_launcher: Path) -> None:
    root = shared / "new" / "repo"  # neither exists yet: check_writable makes both
    st = LocalStorage(root)
    st.check_writable()
    write_as_root(st)
    uid, gid = _pg_ids()
    assert {(o[1], o[2]) for o in owners(shared / "new")} == {(uid, gid)}, owners(shared / "new")
    res = as_postgres(pgvault_launcher, POSTGRES_USES_IT.format(root=str(root)))
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


def test_a_root_owned_repository_stays_root_owned(shared: Path) -> None:
    root = shared / "rootrepo"
    root.mkdir()  # root's: root is the one meant to use it
    write_as_root(LocalStorage(root))
    assert {(o[1], o[2]) for o in owners(root)} == {(0, 0)}


def test_postgres_is_told_whom_to_run_as(shared: Path, pgvault_launcher: Path) -> None:
    root = shared / "rootrepo"
    root.mkdir(mode=0o755)
    root.chmod(0o755)  # readable, not writable by postgres
    st = LocalStorage(root)
    with st.open_write("obj") as w:
        w.write(b"x")
    os.chmod(root / "obj", 0o600)  # and this object not even readable
    res = as_postgres(pgvault_launcher, f"""
        from pathlib import Path
        from pgvault.errors import StorageError
        from pgvault.storage.local import LocalStorage
        st = LocalStorage(Path({str(root)!r}))
        for name, call in (("write", st.check_writable), ("read", lambda: st.read_bytes("obj"))):
            try:
                call()
            except StorageError as e:
                print(name, "|", e, "|", e.hint)
    """)
    lines = dict(line.split(" | ", 1) for line in res.stdout.splitlines())
    assert "Permission denied" in lines["write"], res
    assert "belongs to root and is not writable by postgres: run pgvault as root" in lines["write"], res
    assert "Permission denied" in lines["read"], res
    assert "not readable by postgres" in lines["read"] and "writable" not in lines["read"], res


def test_the_read_hint_never_says_not_writable(tmp_path: Path) -> None:
    # As root nothing is denied; a read refused for another reason keeps its own wording.
    from pgvault.storage.local import _error

    err = _error("read", tmp_path / "x", PermissionError(13, "Permission denied"))
    assert isinstance(err, StorageError) and err.hint and "writable" not in err.hint
    err = _error("write", tmp_path / "x", PermissionError(13, "Permission denied"))
    assert err.hint and "not writable" in err.hint
