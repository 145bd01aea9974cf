"""How a base backup spreads the data directory over parallel tar parts."""

from __future__ import annotations

import threading
from pathlib import Path

from pgvault.operations.physical.datadir_tar import split_parts


def test_directories_and_links_stay_in_the_first_part_and_files_are_shared_largest_first(tmp_path: Path) -> None:
    (tmp_path / "base" / "1").mkdir(parents=True)
    sizes = [900, 100, 500, 400, 300, 200, 100]
    files = []
    for i, size in enumerate(sizes):
        f = tmp_path / "base" / "1" / f"f{i}"
        f.write_bytes(b"x" * size)
        files.append(f)
    (tmp_path / "link").symlink_to(tmp_path / "base")
    paths = [tmp_path / "base", tmp_path / "base" / "1", *files, tmp_path / "link"]
    first, shared = split_parts(tmp_path, iter(paths))
    assert first == [tmp_path / "base", tmp_path / "base" / "1", tmp_path / "link"]
    assert len(shared) == len(files)
    # Largest first; equal sizes keep the walk order.
    assert list(shared.paths()) == [files[i] for i in (0, 2, 3, 4, 5, 1, 6)]
    assert list(shared.paths()) == []  # each file is handed out once


def test_every_file_goes_to_exactly_one_part_when_parts_take_concurrently(tmp_path: Path) -> None:
    files = []
    for i in range(2000):
        f = tmp_path / f"f{i}"
        f.write_bytes(b"x" * (i % 7))
        files.append(f)
    first, shared = split_parts(tmp_path, iter(files))
    taken: list[list[Path]] = [[] for _ in range(4)]
    threads = [threading.Thread(target=lambda out: out.extend(shared.paths()), args=(taken[i],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [p for part in taken for p in part]
    assert first == [] and sorted(everything) == sorted(files) and len(everything) == len(set(everything))


def test_the_first_part_lists_its_own_entries_before_taking_files(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    f = tmp_path / "d" / "a"
    f.write_bytes(b"1")
    gone = tmp_path / "dropped-while-walking"
    first, shared = split_parts(tmp_path, iter([tmp_path / "d", f, gone]))
    assert list(shared.paths(first)) == [tmp_path / "d", f]
