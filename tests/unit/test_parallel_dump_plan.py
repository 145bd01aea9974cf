"""policy.parallel_dump: how ``backup --jobs N`` deals tables to dump workers, and its cost model."""

from __future__ import annotations

import itertools
import random

import pytest

from pgvault.policy.parallel_dump import CostModel, TableSize, pattern, plan_shares


def T(name: str, size: int, schema: str = "public") -> TableSize:
    return TableSize(schema, name, size)


def _optimum(sizes: list[int], n: int) -> int:
    """The best possible longest share, by brute force (small inputs only)."""
    best = sum(sizes)
    for assign in itertools.product(range(n), repeat=len(sizes)):
        loads = [0] * n
        for s, b in zip(sizes, assign, strict=True):
            loads[b] += s
        best = min(best, max(loads))
    return best


def test_one_job_is_one_share_with_everything():
    tables = [T("a", 5), T("b", 50), T("c", 0)]
    plan = plan_shares(tables, 1)
    assert plan.jobs == 1
    assert sorted(plan.shares[0].tables) == sorted(tables)
    assert plan.main_args() == []


def test_largest_first_to_the_lightest_share():
    plan = plan_shares([T("a", 10), T("b", 70), T("c", 20), T("d", 30), T("e", 25)], 2)
    assert [[t.name for t in s.tables] for s in plan.shares] == [["b", "a"], ["d", "e", "c"]]
    assert [s.bytes for s in plan.shares] == [80, 75]


def test_never_more_shares_than_tables_and_never_an_empty_one():
    plan = plan_shares([T("a", 1), T("b", 2)], 8)
    assert plan.jobs == 2
    assert all(s.tables for s in plan.shares)
    assert plan_shares([], 4).jobs == 1  # a database without tables still has its main dump


def test_small_tables_stay_in_the_main_dump():
    plan = plan_shares([T("big", 1000), T("big2", 900), T("tiny", 3), T("tiny2", 4)], 4, min_bytes=100)
    assert plan.jobs == 2
    assert {t.name for t in plan.shares[0].tables} == {"big", "tiny", "tiny2"}
    assert [t.name for t in plan.shares[1].tables] == ["big2"]


def test_only_small_tables_means_one_job():
    plan = plan_shares([T("a", 3), T("b", 4)], 4, min_bytes=100)
    assert plan.jobs == 1 and len(plan.shares[0].tables) == 2


def test_deterministic_whatever_the_input_order():
    tables = [T(f"t{i}", (i * 37) % 11) for i in range(30)]
    first = plan_shares(tables, 3)
    for seed in range(10):
        shuffled = tables[:]
        random.Random(seed).shuffle(shuffled)
        assert plan_shares(shuffled, 3) == first


@pytest.mark.parametrize("n", [1, 2, 3])
def test_every_small_input_every_table_once_and_within_the_lpt_bound(n):
    rng = random.Random(n)
    for _ in range(300):
        sizes = [rng.choice([0, 1, 2, 3, 5, 8, 13, 40, 100]) for _ in range(rng.randint(0, 7))]
        tables = [T(f"t{i}", s) for i, s in enumerate(sizes)]
        plan = plan_shares(tables, n)
        dealt = [t for s in plan.shares for t in s.tables]
        assert sorted(dealt) == sorted(tables)
        assert [s.index for s in plan.shares] == list(range(plan.jobs))
        assert plan.jobs == max(1, min(n, len(tables)))
        if len(tables) > 0 and plan.jobs > 1:
            assert all(s.tables for s in plan.shares)
        longest = max(s.bytes for s in plan.shares)
        opt = _optimum(sizes, plan.jobs) if sizes else 0
        assert longest * 3 <= opt * 4 + 1e-9 or longest == max(sizes, default=0)
        assert longest >= max(sizes, default=0)


def test_arguments_name_every_table_exactly_once():
    tables = [T("a", 9), T("b", 8), T("c", 7), T("d", 6, schema="other")]
    plan = plan_shares(tables, 3)
    excluded = plan.main_args()
    included = [a for i in range(1, plan.jobs) for a in plan.data_args(i) if a.startswith("--table=")]
    assert sorted(a.split("=", 1)[1] for a in excluded) == sorted(a.split("=", 1)[1] for a in included)
    assert all(plan.data_args(i)[0] == "--data-only" for i in range(1, plan.jobs))
    owners = plan.owner_of()
    assert set(owners) == {(t.schema, t.name) for t in tables}
    assert owners[("public", "a")] == 0
    with pytest.raises(ValueError):
        plan.data_args(0)
    with pytest.raises(ValueError):
        plan.data_args(plan.jobs)


@pytest.mark.parametrize(
    ("schema", "name", "expected"),
    [
        ("public", "orders", '"public"."orders"'),
        ("Sales", "Order Lines", '"Sales"."Order Lines"'),
        ("s", 'we"ird', '"s"."we""ird"'),
        ("s", "a.b*c?", '"s"."a.b*c?"'),  # literal inside quotes: no wildcard, no separator
    ],
)
def test_patterns_quote_every_name(schema, name, expected):
    assert pattern(schema, name) == expected


def test_bad_input_is_refused():
    with pytest.raises(ValueError):
        plan_shares([T("a", 1)], 0)
    with pytest.raises(ValueError):
        plan_shares([T("a", 1), T("a", 2)], 2)
    with pytest.raises(ValueError):
        plan_shares([T("a", -1)], 2)


def test_cost_model_is_bounded_by_the_largest_table_and_the_cores():
    m = CostModel(bytes_per_s=100.0, cpu_per_job=1.0, fixed_s=1.0)
    sizes = [1000, 100, 100, 100]
    assert m.wall_s(sizes, 1, 2) == pytest.approx(1.0 + 13.0)
    # One table of 1000 outweighs the rest: more jobs and cores cannot beat it.
    assert m.wall_s(sizes, 4, 16) == pytest.approx(1.0 + 10.0)
    even = [100] * 16
    assert m.wall_s(even, 16, 16) == pytest.approx(1.0 + 1.0)
    assert m.wall_s(even, 4, 16) == pytest.approx(1.0 + 4.0)
    assert m.wall_s([], 4, 16) == 1.0


def test_cost_model_shares_the_cores():
    # Two workers needing 1.5 cores each on 2 cores run at 2/3 speed while both run.
    m = CostModel(bytes_per_s=90.0, cpu_per_job=1.5)
    assert m.wall_s([180, 90], 2, 2) == pytest.approx(90 / 60 + 90 / 90)  # both at 60 B/s, then one at 90
    assert m.wall_s([180, 90], 1, 2) == pytest.approx(270 / 90)
    # 16 equal tables, 16 workers, 12 cores at 1.5 per worker: 8 workers' worth of throughput.
    assert m.wall_s([90] * 16, 16, 12) == pytest.approx(16 * 90 / (8 * 90))
    # Storage carrying 180 B/s in all caps everything.
    capped = CostModel(bytes_per_s=90.0, cpu_per_job=1.0, max_bytes_per_s=180.0)
    assert capped.wall_s([90] * 16, 16, 64) == pytest.approx(16 * 90 / 180)
    # Never faster than the largest table at full speed.
    for jobs in range(1, 6):
        assert m.wall_s([500, 60, 50, 40], jobs, 2) >= 500 / 90 - 1e-9
