"""Planning ``pgvault backup --jobs N``: which tables each dump worker takes, and what it will cost (pure).

pg_dump is one process on one core.  ``--jobs N`` runs N pg_dump processes that import one exported
snapshot, so together they see one consistent database:

* share 0 is the **main dump**: an ordinary ``pg_dump -Fc`` of the whole database (every definition,
  sequences, large objects, and the data of its own tables) with ``--exclude-table-data`` for every
  table another share takes;
* shares 1..N-1 are **data dumps**: ``pg_dump -Fc --data-only --table=...`` of their tables.

Every object is an ordinary custom-format archive, so the break-glass restore with stock tools is
``pg_restore --section=pre-data main``, ``pg_restore --data-only`` of each data object (in any order,
in parallel), then ``pg_restore --section=post-data main`` (indexes and foreign keys last, as pg_restore
orders them itself).

Tables are dealt out largest first, each to the share with the fewest bytes so far (LPT scheduling:
the longest share is at most 4/3 of the best possible split, and exactly the largest table whenever
one table outweighs the rest).  A table is a unit: its rows are never split between workers, so the
wall time can never be less than the time of the largest table.  Sizes are the pages of the heap and
its TOAST table from the statistics (what pg_dump reads; indexes are not dumped; pg_dump -j orders
its work the same way, and reading them takes no lock); a table never vacuumed or analyzed counts as
empty and stays in the main dump.  Partitions are tables of their own (the data
lives in the leaves), so a partitioned table spreads over the workers.

Names reach pg_dump as patterns; inside double quotes every character of a pattern is literal
(pg_dump's processSQLNamePattern escapes regular-expression characters between quotes), so quoting
schema and name with doubled inner quotes matches exactly one table.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class TableSize:
    """One table that holds data (relkind r, m, or a partition leaf), and its size in bytes."""

    schema: str
    name: str
    bytes: int

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class Share:
    """The tables one dump worker takes (share 0 is the main dump)."""

    index: int
    tables: tuple[TableSize, ...]

    @property
    def bytes(self) -> int:
        return sum(t.bytes for t in self.tables)


@dataclass(frozen=True)
class DumpPlan:
    shares: tuple[Share, ...]

    @property
    def jobs(self) -> int:
        return len(self.shares)

    def main_args(self) -> list[str]:
        """pg_dump arguments of share 0: everything except the data other shares dump."""
        return [f"--exclude-table-data={pattern(t.schema, t.name)}" for s in self.shares[1:] for t in s.tables]

    def data_args(self, index: int) -> list[str]:
        """pg_dump arguments of data share ``index`` (1..jobs-1)."""
        if not 1 <= index < self.jobs:
            raise ValueError(f"no data share {index} in a plan of {self.jobs}")
        return ["--data-only", *(f"--table={pattern(t.schema, t.name)}" for t in self.shares[index].tables)]

    def owner_of(self) -> dict[tuple[str, str], int]:
        """(schema, table) -> the share that dumps its rows."""
        return {(t.schema, t.name): s.index for s in self.shares for t in s.tables}


def quote_pattern_part(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


def pattern(schema: str, name: str) -> str:
    """A pg_dump ``--table`` pattern that matches exactly ``schema.name``."""
    return f"{quote_pattern_part(schema)}.{quote_pattern_part(name)}"


def plan_shares(tables: Iterable[TableSize], jobs: int, *, min_bytes: int = 0) -> DumpPlan:
    """Deal ``tables`` to at most ``jobs`` shares, largest first, each to the lightest share.

    Tables smaller than ``min_bytes`` stay in the main dump (a separate pg_dump process for a handful
    of kilobytes costs more than it saves).  Shares that would be empty are not made: ``jobs`` is an
    upper bound, and a plan always has its main share.  Deterministic: ties go to the name order and
    the lowest share.
    """
    if jobs < 1:
        raise ValueError("jobs must be at least 1")
    ordered = sorted(tables, key=lambda t: (-t.bytes, t.schema, t.name))
    if len({(t.schema, t.name) for t in ordered}) != len(ordered):
        raise ValueError("a table is listed twice")
    if any(t.bytes < 0 for t in ordered):
        raise ValueError("a table size is negative")
    big = [t for t in ordered if t.bytes >= min_bytes]
    small = [t for t in ordered if t.bytes < min_bytes]
    n = max(1, min(jobs, len(big)))
    bins: list[list[TableSize]] = [[] for _ in range(n)]
    loads = [0] * n
    for t in big:
        i = min(range(n), key=lambda k: (loads[k], len(bins[k]), k))  # zero-size tables spread too
        bins[i].append(t)
        loads[i] += t.bytes
    bins[0].extend(small)
    return DumpPlan(tuple(Share(i, tuple(b)) for i, b in enumerate(bins)))


@dataclass(frozen=True)
class CostModel:
    """What one dump worker moves per second, measured on this kind of machine (bench/parallel_dump.py).

    ``bytes_per_s``: table bytes one worker turns into stored bytes per second when it has the cores
    it needs (pg_dump, its server backend, zstd and age together); ``cpu_per_job``: the cores one
    worker keeps busy then; ``max_bytes_per_s``: what storage and network carry for all workers
    together (None: not the limit); ``fixed_s``: per backup (start-up, catalog queries, manifest).
    """

    bytes_per_s: float
    cpu_per_job: float
    fixed_s: float = 0.0
    max_bytes_per_s: float | None = None

    def rate(self, running: int, cores: int) -> float:
        """Bytes per second of each of ``running`` workers sharing ``cores`` (and the I/O cap)."""
        share = min(1.0, cores / (running * self.cpu_per_job))
        r = self.bytes_per_s * share
        if self.max_bytes_per_s is not None:
            r = min(r, self.max_bytes_per_s / running)
        return r

    def wall_s(self, table_bytes: Sequence[int], jobs: int, cores: int) -> float:
        """The backup's wall: the tables dealt as ``plan_shares`` deals them, the shares running side
        by side and sharing the cores (each slows down while more run than the cores carry), until
        the last share ends.  Never less than the largest table alone, nor the total at full width."""
        plan = plan_shares([TableSize("", f"t{i}", b) for i, b in enumerate(table_bytes)], jobs)
        left = sorted(float(s.bytes) for s in plan.shares)
        t = 0.0
        while left:
            r = self.rate(len(left), cores)
            step = left[0] / r  # until the smallest share ends
            t += step
            left = [b - step * r for b in left[1:]]
        return self.fixed_s + t
