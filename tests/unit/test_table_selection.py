"""``restore --table SCHEMA.NAME``: names with dots resolve against the backup's tables."""

from __future__ import annotations

import pytest

from pgvault.errors import NotFoundError, UsageError
from pgvault.operations.logical.restore import _selected
from pgvault.pipeline import StreamResult
from pgvault.repository.manifest import DatabaseEntry, StoredObject, TableCount


def _entry(*tables: tuple[str, str]) -> DatabaseEntry:
    obj = StoredObject("app", "app.dump", StreamResult(1, "a" * 64, 1, "b" * 64))
    return DatabaseEntry("app", obj, "UTF8", "C", "C", 0, True, tuple(TableCount(s, t, 1) for s, t in tables))


def test_plain_and_dotted_names() -> None:
    e = _entry(("public", "orders"), ("public", "Big.Odd x"), ("sales", "v1.2"), ("my.schema", "t"))
    pick = lambda *names: [(t.schema, t.name) for t in _selected(e, names)]  # noqa: E731
    assert pick("public.orders", "orders") == [("public", "orders"), ("public", "orders")]
    assert pick("public.Big.Odd x") == [("public", "Big.Odd x")]
    assert pick("Big.Odd x") == [("public", "Big.Odd x")]
    assert pick("sales.v1.2") == [("sales", "v1.2")]
    assert pick("my.schema.t") == [("my.schema", "t")]
    assert len(_selected(e, ())) == 4


def test_unknown_and_ambiguous_names() -> None:
    e = _entry(("a", "b.c"), ("a.b", "c"))
    with pytest.raises(UsageError, match="ambiguous"):
        _selected(e, ("a.b.c",))
    with pytest.raises(NotFoundError, match="not in backup"):
        _selected(e, ("a.x",))
