"""Progress reporting for long streams: a counting reader that logs at most every few seconds."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import IO

from pgvault import log
from pgvault.output import human_bytes

Clock = Callable[[], float]


class CountingReader:
    """Wraps a binary source, counts bytes read, and logs progress every ``every`` seconds."""

    def __init__(self, source: IO[bytes], label: str, *, every: float = 10.0, clock: Clock = time.monotonic) -> None:
        self._source = source
        self.label = label
        self.count = 0
        self._every = every
        self._clock = clock
        self._start = clock()
        self._last = self._start

    def _tick(self, n: int) -> None:
        self.count += n
        now = self._clock()
        if now - self._last >= self._every:
            self._last = now
            rate = self.count / max(now - self._start, 1e-6)
            log.get().info("%s: %s read (%s/s)", self.label, human_bytes(self.count), human_bytes(int(rate)))

    def read(self, n: int = -1) -> bytes:
        data = self._source.read(n)
        self._tick(len(data))
        return data

    def readinto(self, buf: bytearray | memoryview) -> int:
        n = self._source.readinto(buf)  # type: ignore[attr-defined]
        self._tick(n or 0)
        return n or 0

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._source.close()

    @property
    def closed(self) -> bool:
        return bool(self._source.closed)
