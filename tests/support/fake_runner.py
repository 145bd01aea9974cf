"""A :class:`~pgvault.pg.runner.Runner` that runs nothing: each program does what its
:class:`Script` says, and every start is recorded (argv, environment, what went to its stdin).

Given to a verb through ``Context(runner=FakeRunner(...))``; ``runner.using(bindir)`` keeps it a
fake (and keeps its record)."""

from __future__ import annotations

import errno
import io
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from pgvault.pg.runner import Runner, Spawned


@dataclass(frozen=True)
class Script:
    """What a fake program writes and how it exits."""

    stdout: bytes = b""
    stderr: bytes = b""
    returncode: int = 0


class _Stdin(io.BytesIO):
    """Keeps what was written after the program's stdin is closed."""

    def __init__(self) -> None:
        super().__init__()
        self.received = b""

    def close(self) -> None:
        if not self.closed:
            self.received = self.getvalue()
        super().close()


@dataclass
class Call:
    """One start of a program: how it was started, and what became of it."""

    argv: list[str]
    env: dict[str, str] | None
    cwd: Path | None
    stdin: _Stdin | None = None
    killed: bool = False

    @property
    def program(self) -> str:
        args = self.argv[self.argv.index("--") + 1:] if self.argv[0] == "runuser" else self.argv
        return Path(args[0]).name

    @property
    def received(self) -> bytes:
        """What the caller wrote to its stdin."""
        if self.stdin is None:
            return b""
        return self.stdin.received if self.stdin.closed else self.stdin.getvalue()


class _FakeProcess:
    def __init__(self, script: Script, call: Call, stdin: IO[bytes] | None) -> None:
        self.script = script
        self.call = call
        self.stdin: IO[bytes] | None = stdin
        self.stdout: IO[bytes] | None = io.BytesIO(script.stdout)
        self.stderr: IO[bytes] | None = io.BytesIO(script.stderr)
        self.ended = False

    # It "runs" until it is waited for (or killed): a caller may kill it before that.
    def wait(self, timeout: float | None = None) -> int:
        self.ended = True
        return -9 if self.call.killed else self.script.returncode

    def poll(self) -> int | None:
        return self.wait() if self.ended or self.call.killed else None

    def kill(self) -> None:
        self.call.killed = True


@dataclass(frozen=True)
class FakeRunner(Runner):
    """Programs by name → :class:`Script`; a program not listed cannot be run (ENOENT)."""

    programs: Mapping[str, Script] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)

    def spawn(self, argv: Sequence[str], *, env: Mapping[str, str] | None, stdin: int | IO[bytes],
              stdout: int, cwd: Path | None) -> Spawned:
        call = Call(list(argv), None if env is None else dict(env), cwd)
        script = self.programs.get(call.program)
        if script is None:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", argv[0])
        self.calls.append(call)
        pipe = _Stdin() if stdin == subprocess.PIPE else None
        call.stdin = pipe
        return _FakeProcess(script, call, pipe)

    def started(self, program: str) -> list[Call]:
        return [c for c in self.calls if c.program == program]
