"""Incremental chains (policy/chain.py), exhaustively on small made-up repositories."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pgvault.policy.chain import ChainBroken, broken, chain_of, choose_reference, dependents


@dataclass(frozen=True)
class B:
    backup_id: str
    backup_type: str = "full"
    reference: str | None = None
    reference_start_lsn: str = ""
    start_lsn: str = "0/0"


def repo(*bs: B) -> dict[str, B]:
    return {b.backup_id: b for b in bs}


F1 = B("f1", start_lsn="0/100")
I1 = B("i1", "incr", "f1", "0/100", "0/200")
I2 = B("i2", "incr", "i1", "0/200", "0/300")
D1 = B("d1", "diff", "f1", "0/100", "0/400")
I3 = B("i3", "incr", "d1", "0/400", "0/500")
ALL = repo(F1, I1, I2, D1, I3)


def test_chains_run_from_the_full_backup_to_the_one_asked_for() -> None:
    assert chain_of("f1", ALL) == ["f1"]
    assert chain_of("i2", ALL) == ["f1", "i1", "i2"]
    assert chain_of("d1", ALL) == ["f1", "d1"]
    assert chain_of("i3", ALL) == ["f1", "d1", "i3"]


def test_a_missing_or_damaged_link_breaks_every_backup_below_it_and_is_named() -> None:
    without_i1 = {k: v for k, v in ALL.items() if k != "i1"}
    with pytest.raises(ChainBroken, match="it needs base backup i1, and it is not in the repository"):
        chain_of("i2", without_i1)
    assert chain_of("i3", without_i1) == ["f1", "d1", "i3"]  # another branch is not affected
    with pytest.raises(ChainBroken, match=r"needs base backup i1, and its manifest is damaged \(bad JSON\)"):
        chain_of("i2", without_i1, {"i1": "bad JSON"})
    with pytest.raises(ChainBroken, match="not in the repository"):
        chain_of("nope", ALL)


def test_a_reference_replaced_by_another_backup_of_the_same_id_is_refused() -> None:
    swapped = {**ALL, "i1": B("i1", "incr", "f1", "0/100", "0/250")}
    with pytest.raises(ChainBroken, match="started at 0/200, but i1 in the repository started at 0/250"):
        chain_of("i2", swapped)


def test_a_loop_is_refused() -> None:
    loop = repo(B("a", "incr", "b", "", "0/1"), B("b", "incr", "a", "", "0/2"))
    with pytest.raises(ChainBroken, match="loops"):
        chain_of("a", loop)


def test_choosing_the_reference() -> None:
    newest_first = [I3, D1, I2, I1, F1]
    assert choose_reference("incr", newest_first, ALL).reference == "i3"
    assert choose_reference("diff", newest_first, ALL).reference == "f1"
    assert choose_reference("full", newest_first, ALL).reference is None
    none = choose_reference("incr", [], {})
    assert none.reference is None and "no base backup to take an incr against" in none.reason
    assert "no full backup to take a diff against" in choose_reference("diff", [I1], repo(I1)).reason
    broken = choose_reference("incr", [I2, I1], repo(I2, I1))  # f1 is gone: i2's chain is broken
    assert broken.reference is None and "f1" in broken.reason and "full backup is taken instead" in broken.reason


def test_dependents() -> None:
    assert dependents(ALL) == {"f1": ["d1", "i1"], "i1": ["i2"], "d1": ["i3"]}


def test_broken_names_every_incremental_that_cannot_reach_its_full() -> None:
    assert broken(ALL) == {}
    without_i1 = {k: v for k, v in ALL.items() if k != "i1"}
    assert broken(without_i1) == {"i2": "it needs base backup i1, and it is not in the repository"}
    without_f1 = {k: v for k, v in ALL.items() if k != "f1"}
    assert set(broken(without_f1, {"f1": "not JSON"})) == {"i1", "i2", "d1", "i3"}
    assert "its manifest is damaged (not JSON)" in broken(without_f1, {"f1": "not JSON"})["d1"]
