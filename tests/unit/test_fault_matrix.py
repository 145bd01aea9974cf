"""docs/faults.md and the fault suites cannot drift apart (issue 8).

Every test the table names must exist, and every test of the suites the table lists must be named
in it: a new fault test without its row (fault, promise, result) fails here, as does a row whose
test was renamed or removed.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "faults.md"
RESULTS = {"held", "fixed", "open"}


def _rows() -> list[list[str]]:
    rows = []
    for line in DOC.read_text().splitlines():
        if line.startswith("| ") and not line.startswith("| fault ") and not line.startswith("|---"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def _suites() -> list[str]:
    text = DOC.read_text()
    block = text.split("Suites:", 1)[1].split("\n\n", 1)[0]
    return re.findall(r"`([^`]+\.py)`", block)


def _tests_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


def test_every_row_names_an_existing_test_and_a_result() -> None:
    rows = _rows()
    assert len(rows) >= 40
    for fault, where, promise, test, result in rows:
        assert fault and where and promise, (fault, where)
        assert result in RESULTS, (fault, result)
        if result == "open":
            continue
        m = re.fullmatch(r"`(tests/[\w/]+\.py)::(test_\w+)`", test)
        assert m, f"row {fault!r}: {test!r} is not `path::test`"
        path = ROOT / m.group(1)
        assert path.exists(), f"row {fault!r}: {m.group(1)} does not exist"
        assert m.group(2) in _tests_in(path), f"row {fault!r}: {m.group(2)} is not a test in {m.group(1)}"


def test_every_test_of_the_fault_suites_has_a_row() -> None:
    named = {t.strip("`") for *_x, t, _r in _rows()}
    missing = []
    for suite in _suites():
        path = ROOT / suite
        assert path.exists(), suite
        missing += [f"{suite}::{t}" for t in sorted(_tests_in(path)) if f"{suite}::{t}" not in named]
    assert not missing, f"fault tests without a row in docs/faults.md: {missing}"


def test_the_counts_in_the_summary_match_the_table() -> None:
    counts = Counter(r[-1] for r in _rows())
    summary = re.search(r"(\d+) faults listed: (\d+) held, (\d+) fixed, (\d+) open", DOC.read_text())
    assert summary, "docs/faults.md needs its summary line"
    tried, held, fixed, open_ = map(int, summary.groups())
    assert (tried, held, fixed, open_) == (sum(counts.values()), counts["held"], counts["fixed"], counts["open"])
