"""The generated sample database (pgvault.sample), without a server: deterministic, consistent
(every foreign key points at a row, history chains end in the current value), and written in
COPY's text format correctly.  Loading it into real servers: tests/integration/test_sample_db.py."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stdout

import pytest

from pgvault import sample
from pgvault.sample import Sample

# Later issues' disaster scenarios and the README quote these numbers: a change to the generator
# that changes the data must be deliberate (update them, and the README's "Sample database").
SCALE_1_COUNTS = {
    "organizations": 25, "projects": 109, "configs": 1284, "config_history": 3752,
    "config_history_2023": 1106, "config_history_2024": 2346, "config_history_2025": 300, "config_history_default": 0,
}
SCALE_1_SHA256 = "101fe6143621a562e4d09223455e480f1aba227300664a99647f6d342fb7144e"


def _unescape(field: str) -> str | None:
    if field == "\\N":
        return None
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\":
            out.append({"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}[field[i + 1]])
            i += 2
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _table(s: Sample, table: str) -> list[list[str | None]]:
    rows = []
    for line in s.rows(table):
        assert line.endswith("\n") and line.count("\n") == 1  # one row, one line: newlines are escaped
        rows.append([_unescape(f) for f in line[:-1].split("\t")])
    return rows


def test_same_scale_and_seed_same_bytes() -> None:
    text = "".join(sample.script())
    assert text == "".join(Sample(1, 1).script())
    assert hashlib.sha256(text.encode()).hexdigest() == SCALE_1_SHA256
    assert "".join(Sample(1, 2).script()) != text


def test_counts_are_pinned_and_match_the_rows() -> None:
    s = Sample()
    counts = s.counts()
    assert counts == SCALE_1_COUNTS
    for table in sample.TABLES:
        assert sum(1 for _ in s.rows(table)) == counts[table]
    assert sum(counts[p] for p in sample.PARTITIONS) == counts["config_history"]
    assert 4000 <= sum(counts[t] for t in sample.TABLES) <= 6000  # "a few thousand rows" by default


def test_a_larger_scale_extends_a_smaller_one() -> None:
    small, large = Sample(1), Sample(3)
    assert large.counts()["organizations"] == 3 * small.counts()["organizations"]
    for table in sample.TABLES:
        head = list(small.rows(table))
        assert list(large.rows(table))[: len(head)] == head


def test_every_reference_points_at_an_earlier_row_and_keys_are_unique() -> None:
    s = Sample(2, seed=7)
    orgs = _table(s, "organizations")
    projects = _table(s, "projects")
    configs = _table(s, "configs")
    history = _table(s, "config_history")
    for rows in (orgs, projects, configs, history):
        assert [int(r[0] or 0) for r in rows] == list(range(1, len(rows) + 1))  # ids 1..n, as the identities
    assert len({r[1] for r in orgs}) == len(orgs)  # slug
    org_ids, project_ids, config_ids = ({int(r[0] or 0) for r in t} for t in (orgs, projects, configs))
    assert {int(r[1] or 0) for r in projects} <= org_ids
    assert len({(r[1], r[2]) for r in projects}) == len(projects)  # (organization_id, name)
    assert {int(r[1] or 0) for r in configs} <= project_ids
    assert len({(r[1], r[2]) for r in configs}) == len(configs)  # (project_id, key)
    assert {int(r[1] or 0) for r in history} == config_ids  # every config has its creation recorded
    assert {r[3] for r in projects} <= {"production", "staging", "development"}
    assert {r[3] for r in orgs} <= {"free", "team", "enterprise"}


def test_history_chains_end_in_the_current_value() -> None:
    s = Sample(1, seed=3)
    chains: dict[str, list[list[str | None]]] = {}
    for row in _table(s, "config_history"):
        chains.setdefault(row[1] or "", []).append(row)
    for cid, _project, _key, value, version, updated_at, updated_by in _table(s, "configs"):
        chain = chains[cid or ""]
        assert len(chain) == int(version or 0)
        assert chain[0][4] is None  # created
        for before, after in zip(chain, chain[1:]):
            assert after[4] == before[5] and (after[2] or "") > (before[2] or "")
        assert (chain[-1][5], chain[-1][2], chain[-1][3]) == (value, updated_at, updated_by)
        json.loads(value or "")
        assert "2023-01-01" <= (chain[0][2] or "") and (chain[-1][2] or "") < "2026-01-01"


def test_awkward_text_survives_copy_escaping() -> None:
    values = [json.loads(r[3] or "") for r in _table(Sample(2), "configs")]
    banners = {v for v in values if isinstance(v, str) and " " in v}
    assert {"Line one\nLine two", "Column\tseparated\tby tabs", "It's 100% done; \\N is not NULL here"} <= banners
    names = {r[2] for r in _table(Sample(2), "organizations")}
    assert any(n and not n.isascii() for n in names)


def test_script_is_one_transaction_with_data_before_keys() -> None:
    text = "".join(Sample().script())
    assert text.index("BEGIN;") < text.index("CREATE TABLE organizations") < text.index("COPY organizations")
    assert text.index("\\.\n") < text.index("PRIMARY KEY") < text.index("CREATE TRIGGER") < text.index("COMMIT;")
    assert text.count("COPY ") == 4 and text.count("\n\\.\n") == 4


def test_cli_writes_the_script_or_the_counts() -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        assert sample.main(["--counts"]) == 0
    assert json.loads(out.getvalue()) == SCALE_1_COUNTS
    proc = subprocess.run([sys.executable, "-m", "pgvault.sample"], capture_output=True, check=True,
                          env={**os.environ, "LC_ALL": "C", "PYTHONIOENCODING": "ascii"})
    assert proc.stdout == "".join(Sample().script()).encode()  # UTF-8 whatever the locale
    with pytest.raises(ValueError):
        Sample(0)
