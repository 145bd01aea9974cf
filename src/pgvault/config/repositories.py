"""Named repositories beside the primary one: reading the ``repositories.<name>`` section of the
config file and the ``PGVAULT_REPOSITORIES_<NAME>_*`` environment variables.

Each named repository takes the primary's repository settings (``url`` and ``s3.*``), with the
primary's parsers; a ``-`` in a name is ``_`` in the environment (``region-b`` ->
``PGVAULT_REPOSITORIES_REGION_B_URL``).  The environment wins over the file, as everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

PRIMARY_REPOSITORY = "primary"  # the name of repository.*
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
_ENV_PREFIX = "PGVAULT_REPOSITORIES_"


def _env_name(name: str) -> str:
    return name.upper().replace("-", "_").replace(".", "_")


def named_settings(doc: Any, env: Mapping[str, str], where: str, template: Mapping[str, Callable[[Any], Any]],
                   flatten: Callable[[dict[str, Any]], dict[str, Any]], problems: list[str]) -> dict[str, dict[str, Any]]:
    """Name -> {setting below ``repository.`` (``url``, ``s3.region``...): parsed value} for every
    named repository with a ``url``; every problem is appended to ``problems``."""
    raw: dict[str, dict[str, Any]] = {}
    if not isinstance(doc, dict):
        problems.append(f"{where}: 'repositories' must map repository names to their settings")
        doc = {}
    for name, body in doc.items():
        if not isinstance(body, dict):
            problems.append(f"{where}: repositories.{name} must be a mapping with at least 'url'")
            continue
        for key, value in flatten(body).items():
            if key not in template:
                problems.append(f"{where}: unknown setting 'repositories.{name}.{key}'")
            else:
                raw.setdefault(str(name), {})[key] = value
    # Longest first: ..._S3_ENDPOINT_URL must not be read as the URL of a repository "x-s3-endpoint".
    rests = sorted(template, key=len, reverse=True)
    by_env = {_env_name(n): n for n in raw}
    for var, value in env.items():
        if not var.startswith(_ENV_PREFIX):
            continue
        body = var.removeprefix(_ENV_PREFIX)
        rest = next((r for r in rests if body.endswith("_" + _env_name(r))), None)
        if rest is None:
            problems.append(f"environment: {var} is not a repository setting ({_ENV_PREFIX}<NAME>_URL, ..._S3_*)")
            continue
        env_name = body[: -len(rest) - 1]
        name = by_env.setdefault(env_name, env_name.lower().replace("_", "-"))
        raw.setdefault(name, {})[rest] = value
    out: dict[str, dict[str, Any]] = {}
    for name, values in raw.items():
        if name == PRIMARY_REPOSITORY or not _NAME.match(name):
            problems.append(f"repositories.{name}: not a valid repository name (lowercase letters, digits and '-', "
                            f"starting with a letter; {PRIMARY_REPOSITORY!r} is the repository.* one)")
            continue
        parsed: dict[str, Any] = {}
        for rest, parse in template.items():
            if values.get(rest) is not None:
                try:
                    parsed[rest] = parse(values[rest])
                except (TypeError, ValueError) as e:
                    problems.append(f"repositories.{name}.{rest} = {values[rest]!r}: {e}")
        if not parsed.get("url"):
            problems.append(f"repositories.{name}.url: must be set")
            continue
        out[name] = parsed
    return out
