"""Parsers for setting values: each takes what YAML or the environment gives (a string from the
environment, any YAML scalar or list) and returns the typed value or raises ValueError with a
sentence that says what a valid value looks like (the settings table in :mod:`pgvault.config`
names the setting).  Strict where leniency would change the meaning: an S3 endpoint needs a
scheme; a duration's bare number is seconds only when alone."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def to_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected a boolean (true/false), got {v!r}")


def to_int(v: Any) -> int:
    if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
        raise ValueError(f"expected an integer, got {v!r}")
    return int(v)


def to_float(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError(f"expected a number, got {v!r}")
    return float(v)


def to_opt_int(v: Any) -> int | None:
    return None if v is None or v == "" else to_int(v)


def to_str(v: Any) -> str:
    if isinstance(v, (dict, list)):
        raise ValueError(f"expected a string, got {type(v).__name__}")
    return str(v)


def one_of(*choices: str) -> Callable[[Any], str]:
    """A parser accepting exactly one of ``choices``."""

    def parse(v: Any) -> str:
        text = to_str(v)
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {text!r}")
        return text

    return parse


def to_opt_str(v: Any) -> str | None:
    return None if v is None or v == "" else to_str(v)


def to_endpoint(v: Any) -> str | None:
    """An S3 endpoint is a URL with its scheme.  botocore reads ``127.0.0.1:8333`` as a URL whose
    scheme is ``127.0.0.1`` (or fails only inside the first request, far from the setting), so
    a missing or odd scheme is reported here, with the URL it probably should have been."""
    from urllib.parse import urlsplit

    text = to_opt_str(v)
    if text is None:
        return None
    example = "a URL like http://127.0.0.1:8333 or https://s3.eu-west-1.amazonaws.com"
    if "://" not in text:
        raise ValueError(f"the URL has no scheme: write it as 'http://{text}' or 'https://{text}'")
    parts = urlsplit(text)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError(f"the port is not a number: expected {example}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected {example} (scheme http or https, then a host)")
    return text


def to_webhook(v: Any) -> str | None:
    """A notification URL: http(s) with a host.  The value is a credential, so no message here
    quotes it (the loader shows it as <secret> too)."""
    from urllib.parse import urlsplit

    text = to_opt_str(v)
    if text is None:
        return None
    text = text.strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError("not a valid URL: expected https://host/path") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http:// or https:// URL with a host (https://hooks.slack.com/services/...)")
    return text


NOTIFY_EVENTS = ("failure", "success", "recovery")


def to_notify_events(v: Any) -> tuple[str, ...]:
    """Events among failure / success / recovery; an empty list turns notifications off."""
    events = to_list(v)
    bad = [e for e in events if e not in NOTIFY_EVENTS]
    if bad:
        raise ValueError(f"unknown event(s) {', '.join(bad)}: expected a list of {', '.join(NOTIFY_EVENTS)}")
    return tuple(dict.fromkeys(events))


def to_list(v: Any) -> tuple[str, ...]:
    if v is None:
        return ()
    if isinstance(v, str):
        return tuple(p.strip() for p in v.replace("\n", ",").split(",") if p.strip())
    if isinstance(v, list):
        return tuple(to_str(x).strip() for x in v if str(x).strip())
    raise ValueError(f"expected a list, got {type(v).__name__}")


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_NUMBER_RE = re.compile(r"\d+(\.\d+)?|\.\d+")
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?|\.\d+)([smhdwy])")
_DURATION_RE = re.compile(r"((\d+(\.\d+)?|\.\d+)[smhdwy])+|\d+(\.\d+)?|\.\d+")


def parse_duration(v: Any) -> float:
    """Seconds from ``90``, ``90s``, ``15m``, ``36h``, ``7d``, ``2w``, ``1y`` (or combinations: ``1d12h``)."""
    if isinstance(v, bool):
        raise ValueError(f"expected a duration like 36h or 7d, got {v!r}")
    if isinstance(v, (int, float)):
        if v < 0:
            raise ValueError("a duration must not be negative")
        return float(v)
    text = str(v).strip().lower().replace(" ", "")
    if not text:
        raise ValueError("empty duration")
    # A bare number means seconds only on its own: in ``1w2`` the 2 is a missing unit (weeks?
    # days?), and silently adding 2 seconds would make a retention window mean something else.
    if not _DURATION_RE.fullmatch(text):
        raise ValueError(f"expected a duration like 90s, 15m, 36h, 7d, 2w or 1d12h "
                         f"(a number with a unit s/m/h/d/w/y after each part; a number alone is seconds), got {v!r}")
    if _NUMBER_RE.fullmatch(text):
        return float(text)
    return sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART_RE.findall(text))


def to_lock_mode(v: Any) -> str:
    """``repository.s3.object_lock``: off | governance | compliance (YAML's bare ``off`` is False)."""
    text = "off" if v is None or v is False else str(v).strip().lower()
    if text not in ("off", "governance", "compliance"):
        raise ValueError(f"expected off, governance or compliance, got {v!r}")
    return text


def to_lock_retention(v: Any) -> float | None:
    """``repository.s3.object_lock_retention``: a duration, or ``retention`` (None: until the policy expires it)."""
    if v is None or str(v).strip().lower() in ("", "retention"):
        return None
    return parse_duration(v)


def to_opt_duration(v: Any) -> float | None:
    return None if v is None or v == "" else parse_duration(v)


@dataclass(frozen=True)
class SmokeQuery:
    """A drill's check: ``sql`` returns one value that must equal ``expect`` or be at least ``min``."""

    name: str
    sql: str
    database: str | None = None
    expect: str | None = None
    min: float | None = None


def to_smoke(v: Any) -> tuple[SmokeQuery, ...]:
    import json

    if v is None or v == "":
        return ()
    if isinstance(v, str):  # from the environment: JSON
        try:
            v = json.loads(v)
        except ValueError:
            raise ValueError("expected a JSON list of {sql, expect | min} objects") from None
    if not isinstance(v, list):
        raise ValueError("expected a list of {sql, expect | min} entries")
    out = []
    for i, item in enumerate(v, 1):
        if not isinstance(item, dict) or not isinstance(item.get("sql"), str) or not item["sql"].strip():
            raise ValueError(f"entry {i} needs an 'sql' string")
        unknown = set(item) - {"name", "sql", "database", "expect", "min"}
        if unknown:
            raise ValueError(f"entry {i} has unknown key(s) {', '.join(sorted(unknown))}")
        if ("expect" in item) == ("min" in item):
            raise ValueError(f"entry {i} needs exactly one of 'expect' or 'min'")
        out.append(SmokeQuery(
            name=str(item.get("name") or item["sql"].strip()[:60]), sql=item["sql"],
            database=str(item["database"]) if item.get("database") else None,
            expect=str(item["expect"]) if "expect" in item else None,
            min=float(item["min"]) if "min" in item else None,
        ))
    return tuple(out)


def to_dirs(v: Any) -> tuple[str, ...]:
    """Directories: a YAML list, or a string separated by commas or the OS path separator (``:``),
    as in ``PATH`` (the deprecated ``PGVAULT_PG_BINDIRS`` was ``:``-separated)."""
    if isinstance(v, str):
        v = v.replace(os.pathsep, ",")
    return to_list(v)
