"""The local writer starts the write-out of what it wrote as it goes, so commit's fsync has little left."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from pgvault import fs
from pgvault.storage import local
from pgvault.storage.local import LocalStorage

MiB = 1 << 20


def test_writeback_is_started_for_every_8_mib_in_order_and_the_object_is_intact(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(local, "start_writeback", lambda fd, off, n: calls.append((off, n)))
    data = os.urandom(MiB) * 20 + b"tail"
    storage = LocalStorage(tmp_path)
    with storage.open_write("a/b") as w:
        for pos in range(0, len(data), 3 * MiB + 5):  # pieces that do not line up with the 8 MiB steps
            w.write(data[pos : pos + 3 * MiB + 5])
    assert storage.read_bytes("a/b") == data
    assert [off for off, _ in calls] == [0, calls[0][1]]  # contiguous, from the start
    assert all(n >= 8 * MiB for _, n in calls) and sum(n for _, n in calls) <= len(data)


def test_a_small_object_starts_no_writeback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(local, "start_writeback", lambda fd, off, n: calls.append((off, n)))
    with LocalStorage(tmp_path).open_write("k") as w:
        w.write(b"x" * MiB)
    assert calls == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range(2) is Linux's")
def test_start_writeback_is_the_real_call_and_harmless(tmp_path: Path) -> None:
    assert fs._sync_file_range() is not None
    path = tmp_path / "f"
    with open(path, "wb") as f:
        f.write(b"y" * (2 * MiB))
        f.flush()
        fs.start_writeback(f.fileno(), 0, 2 * MiB)
        fs.start_writeback(f.fileno(), MiB, 10 * MiB)  # past the end: no error either
    assert path.read_bytes() == b"y" * (2 * MiB)
