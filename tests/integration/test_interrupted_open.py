"""A signal can arrive between a ``.tmp-*`` file's creation and the ``with`` statement that owns
it (the handler raises at the next bytecode boundary, e.g. on entry to ``__enter__``): the writer
is then never aborted.  The process must still leave no temp file behind when it exits; found by
test_sigterm_during_basebackup_stops_every_part failing under CI load."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent("""
    import os, sys
    from pgvault.storage.base import WriterContextMixin
    from pgvault.storage.local import LocalStorage

    def interrupted_enter(self):
        raise KeyboardInterrupt("SIGTERM")  # what cli.interrupts' handler raises

    storage = LocalStorage(sys.argv[1])
    with storage.open_write("kept/a") as w:
        w.write(b"published")
    WriterContextMixin.__enter__ = interrupted_enter
    try:
        with storage.open_write("lost/b") as w:
            w.write(b"never")
    except KeyboardInterrupt:
        pass
    left = [n for d in ("kept", "lost") for n in os.listdir(os.path.join(sys.argv[1], d))]
    print(" ".join(sorted(left)))  # still there while the process runs
""")


def test_a_temp_file_orphaned_by_a_signal_is_removed_at_exit(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(repo)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    during = done.stdout.split()
    assert "a" in during and any(n.startswith(".tmp-") for n in during), during  # the orphan existed
    assert sorted(p.name for p in repo.rglob("*") if p.is_file()) == ["a"]
    assert (repo / "kept" / "a").read_bytes() == b"published"


def test_a_forked_child_does_not_remove_its_parents_temp_files(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import os, sys
        from pgvault.storage.local import LocalStorage
        w = LocalStorage(sys.argv[1]).open_write("x/obj")
        pid = os.fork()
        if pid == 0:
            sys.exit(0)  # runs the child's exit handlers
        os.waitpid(pid, 0)
        tmps = [n for n in os.listdir(os.path.join(sys.argv[1], "x")) if n.startswith(".tmp-")]
        w.write(b"data")
        w.commit()
        print(len(tmps))
    """)
    repo = tmp_path / "repo"
    repo.mkdir()
    done = subprocess.run([sys.executable, "-c", script, str(repo)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1"]
    assert (repo / "x" / "obj").read_bytes() == b"data"


def test_no_temp_file_is_created_after_the_exit_sweep(tmp_path: Path) -> None:
    """A daemon thread still writing while the interpreter exits (a base backup's part after
    SIGTERM) cannot create a temp file after the sweep at exit has run."""
    import subprocess
    import sys

    (tmp_path / "repo").mkdir()
    code = (
        "import sys\n"
        "from pgvault.storage.local import LocalStorage, _remove_open_temps\n"
        "from pgvault.errors import StorageError\n"
        f"s = LocalStorage({str(tmp_path / 'repo')!r})\n"
        "_remove_open_temps()\n"
        "try:\n"
        "    s._create_temp(s.root)\n"
        "except StorageError as e:\n"
        "    print('refused', 'exiting' in str(e))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert r.stdout.split() == ["refused", "True"], r
    assert not list((tmp_path / "repo").rglob(".tmp-*"))
