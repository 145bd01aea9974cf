"""Running the real ``pgvault`` CLI in a child process, as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_STRIP = ("PG", "PGVAULT_", "AWS_")
_KEEP = ("PGVAULT_POSTGRES_BIN_DIRS", "PGVAULT_PG_BINDIRS")


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any PG*/PGVAULT_*/AWS_* leakage, plus ``extra``.

    PGVAULT_POSTGRES_BIN_DIRS (and its deprecated alias PGVAULT_PG_BINDIRS) is kept: it tells
    pgvault where this machine's PostgreSQL versions live.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(_STRIP) or k in _KEEP}
    env.update(extra)
    return env


@dataclass
class Result:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def __str__(self) -> str:
        return f"pgvault {' '.join(self.argv)} -> {self.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


def pgvault(args: Sequence[str], env: Mapping[str, str], *, check: bool = True, timeout: float = 600) -> Result:
    """Run ``python -m pgvault ARGS``; with ``check`` a non-zero exit fails the test with all output."""
    proc = subprocess.run(
        [sys.executable, "-m", "pgvault", *args], env=dict(env), capture_output=True, text=True, timeout=timeout
    )
    res = Result(list(args), proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        raise AssertionError(str(res))
    return res


def start(args: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen[str]:
    """Start ``pgvault ARGS`` in the background."""
    return subprocess.Popen(
        [sys.executable, "-m", "pgvault", *args], env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
