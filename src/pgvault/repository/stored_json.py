"""Typed reads of one stored JSON document, shared by the repository's small records.

A record is read field by field; every problem is collected (naming its key) and raised together
as one :class:`IntegrityError`, so a damaged record is described in full, once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any, TypeVar

from pgvault.errors import IntegrityError

_T = TypeVar("_T")


class Fields:
    """The fields of ``doc`` (what ``where`` names, e.g. ``checksum record c/wal/.../X.json``)."""

    def __init__(self, doc: object, where: str) -> None:
        if not isinstance(doc, dict):
            raise IntegrityError(f"{where} is not a JSON object")
        self.doc: dict[str, Any] = doc
        self.where = where
        self.problems: list[str] = []

    def _get(self, key: str, required: bool) -> Any:
        value = self.doc.get(key)
        if value is None and required:
            self.problems.append(f"{key!r} is missing")
        return value

    def text(self, key: str, *, required: bool = True) -> str | None:
        value = self._get(key, required)
        if value is None or isinstance(value, str):
            return value
        self.problems.append(f"{key!r} must be a string (got {type(value).__name__})")
        return None

    def integer(self, key: str, *, required: bool = True, minimum: int = 0) -> int | None:
        value = self._get(key, required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.problems.append(f"{key!r} must be an integer of at least {minimum} (got {value!r})")
            return None
        return value

    def identifier(self, key: str) -> str | None:
        """A PostgreSQL system identifier: decimal digits, also as a JSON number (written by hand)."""
        value = self._get(key, True)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return str(value)
        if isinstance(value, str) and value.isdigit():
            return value
        if value is not None:
            self.problems.append(f"{key!r} must be a system identifier (decimal digits, got {value!r})")
        return None

    def time(self, key: str) -> dt.datetime | None:
        """An ISO 8601 time with its UTC offset (what pgvault writes), timezone-aware."""
        value = self._get(key, True)
        if value is None:
            return None
        try:
            t = dt.datetime.fromisoformat(value) if isinstance(value, str) else None
        except ValueError:
            t = None
        if t is None or t.tzinfo is None:
            self.problems.append(f"{key!r} must be an ISO 8601 time with a UTC offset (got {value!r})")
            return None
        return t

    def parsed(self, what: str, parse: Callable[[], _T]) -> _T | None:
        """``parse()`` (another type's from_json, raising :class:`IntegrityError`), its problem
        recorded under ``what``."""
        try:
            return parse()
        except IntegrityError as e:
            self.problems.append(f"{what}: {e.message}")
            return None

    def nested(self, key: str, parse: Callable[[Any], _T]) -> _T | None:
        """Field ``key`` read by ``parse`` (another type's from_json), its problem recorded."""
        value = self._get(key, True)
        return None if value is None else self.parsed(repr(key), lambda: parse(value))

    def check(self) -> None:
        """Raise every problem found so far as one :class:`IntegrityError`."""
        if self.problems:
            raise IntegrityError(f"{self.where} is malformed: " + "; ".join(self.problems))
