"""How a base backup spreads the data directory over parallel tar parts."""

from __future__ import annotations

from pathlib import Path

from pgvault.operations.physical.basebackup import split_parts


def test_files_are_balanced_by_size_and_directories_stay_in_the_first_part(tmp_path: Path) -> None:
    (tmp_path / "base" / "1").mkdir(parents=True)
    sizes = [900, 100, 500, 400, 300, 200, 100]
    files = []
    for i, size in enumerate(sizes):
        f = tmp_path / "base" / "1" / f"f{i}"
        f.write_bytes(b"x" * size)
        files.append(f)
    (tmp_path / "link").symlink_to(tmp_path / "base")
    paths = [tmp_path / "base", tmp_path / "base" / "1", *files, tmp_path / "link"]
    parts = split_parts(tmp_path, iter(paths), 2)
    assert sorted(p for part in parts for p in part) == sorted(paths)  # nothing lost or doubled
    assert all(p.is_file() and not p.is_symlink() for p in parts[1])
    assert {tmp_path / "base", tmp_path / "base" / "1", tmp_path / "link"} <= set(parts[0])
    loads = [sum(p.stat().st_size for p in part if p.is_file() and not p.is_symlink()) for part in parts]
    assert abs(loads[0] - loads[1]) <= max(sizes)


def test_one_part_and_vanished_files(tmp_path: Path) -> None:
    f = tmp_path / "a"
    f.write_bytes(b"1")
    gone = tmp_path / "dropped-while-walking"
    assert split_parts(tmp_path, iter([f, gone]), 1) == [[f]]
