"""SIGTERM and SIGINT end a command the same way: by unwinding it.

Kubernetes, systemd and ``timeout`` stop a process with SIGTERM, whose default action kills
Python on the spot: no ``finally`` runs, so the repository lock, ``.tmp-*`` files, S3 multipart
uploads and child programs (pg_dump, pg_restore) are left behind, and the job record never says
the run failed.  :func:`handling` installs one handler for both signals that raises
:class:`Interrupted` (a ``KeyboardInterrupt``) in the main thread, so every existing ``finally`` /
``except BaseException`` cleanup runs exactly as for Ctrl-C; ``cli.main`` then reports
``InterruptedError_`` (exit 130) or ``TerminatedError`` (exit 143 = 128 + SIGTERM, which is also
what PostgreSQL recognises from a restore_command / archive_command stopped by a shutdown).

Only the first signal raises.  Later ones arrive while that cleanup runs (systemd and ``timeout``
may signal the whole process group, an impatient operator presses Ctrl-C twice); raising again
would abort the cleanup half-way, which is exactly what this module exists to prevent.  They are
noted on stderr; SIGKILL still stops the process at once.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from pgvault.errors import InterruptedError_, TerminatedError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """Raised by the handler in the main thread; ``signum`` is the signal that arrived."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _State:
    def __init__(self) -> None:
        self.signum: int | None = None  # the first signal received while handling() was active
        self.raising = True  # False once the command has finished: record, do not raise


_state = _State()


def _handler(signum: int, _frame: FrameType | None) -> None:
    first = _state.signum is None
    if first:
        _state.signum = signum
    if first and _state.raising:
        raise Interrupted(signum)
    name = signal.Signals(signum).name
    print(f"pgvault: {name} received; still cleaning up (send SIGKILL to stop at once)", file=sys.stderr)


def received() -> int | None:
    """The signal that interrupted the current command, if any."""
    return _state.signum


def finished() -> None:
    """The command is done: a signal from now on (e.g. while its outcome is recorded) is noted
    but no longer raised, so it cannot change the outcome or cut the recording short."""
    _state.raising = False


def error_for(signum: int) -> InterruptedError_:
    """The error ``cli.main`` reports for a command stopped by ``signum``."""
    name = signal.Signals(signum).name
    cls = TerminatedError if signum == signal.SIGTERM else InterruptedError_
    return cls(f"interrupted by {name}; what was being written was discarded, nothing was published",
               hint="the next run starts from scratch; nothing needs cleaning up")


@contextmanager
def handling() -> Iterator[None]:
    """Install the handler for SIGINT and SIGTERM for the duration of one command.

    Outside the main thread (a test calling ``cli.main`` from a worker) signals cannot be
    handled there; nothing is installed."""
    _state.signum, _state.raising = None, True
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {s: signal.signal(s, _handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
