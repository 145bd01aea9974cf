"""The test support removes the directories it makes for servers (they are gigabytes per run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _python(code: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    tests = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{tests}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "PGVAULT_TEST_TMPDIR": str(tmp)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True)


def test_postgres_tmpdirs_are_removed_when_the_process_exits(tmp_path: Path) -> None:
    code = (
        "from support.pgcluster import postgres_tmpdir\n"
        "p = postgres_tmpdir('pgvault-leak-probe-')\n"
        "(p / 'data').mkdir(); (p / 'data' / 'f').write_bytes(b'x' * 1000)\n"
        "print(p)\n"
    )
    r = _python(code, tmp_path)
    made = Path(r.stdout.strip())
    assert made.parent == tmp_path
    assert not made.exists(), f"{made} survived the process that made it"


def test_a_forked_child_leaves_its_parents_dirs_alone(tmp_path: Path) -> None:
    code = (
        "import os\n"
        "from support.pgcluster import postgres_tmpdir\n"
        "p = postgres_tmpdir('pgvault-leak-probe-')\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    import sys; sys.exit(0)\n"
        "os.waitpid(pid, 0)\n"
        "print(p, p.exists())\n"
    )
    r = _python(code, tmp_path)
    path, existed_after_child = r.stdout.split()
    assert existed_after_child == "True", "the child's exit removed its parent's directory"
    assert not Path(path).exists()
