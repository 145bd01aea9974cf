"""backup.row_counts_from: snapshot - count(*) beside pg_dump, errors handed to the dumping thread."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from pgvault.errors import ToolError
from pgvault.operations.logical.backup import _SnapshotCounter


class _Conn:
    def __init__(self, rows: dict[str, int], fail: bool = False) -> None:
        self.rows, self.fail, self.cancelled = rows, fail, 0

    def execute(self, query: Any) -> Any:
        if self.fail:
            raise psycopg.OperationalError("canceling statement due to user request")
        text = query.as_string(None) if hasattr(query, "as_string") else str(query)
        name = text.rsplit(".", 1)[-1].strip('"')
        return type("Cur", (), {"fetchone": lambda _self: (self.rows[name],)})()

    def cancel_safe(self) -> None:
        self.cancelled += 1


def test_counts_every_table_in_order() -> None:
    counter = _SnapshotCounter(_Conn({"a": 3, "b": 0}), "db", [("public", "a", -1), ("s", "b", 7)])  # type: ignore[arg-type]
    counter.start()
    assert [(t.schema, t.name, t.rows) for t in counter.result()] == [("public", "a", 3), ("s", "b", 0)]


def test_a_failed_count_is_a_tool_error_naming_the_database() -> None:
    counter = _SnapshotCounter(_Conn({}, fail=True), "sales", [("public", "a", -1)])  # type: ignore[arg-type]
    counter.start()
    with pytest.raises(ToolError, match="counting rows of database 'sales' failed"):
        counter.result()


def test_stop_cancels_only_a_count_in_flight() -> None:
    conn = _Conn({"a": 1})
    counter = _SnapshotCounter(conn, "db", [("public", "a", -1)])  # type: ignore[arg-type]
    counter.start()
    counter.join()
    counter.stop()  # finished already: nothing to cancel
    assert conn.cancelled == 0
