"""For the tests of what deploy/ ships (alert rules, the Grafana dashboard): metric names in
PromQL expressions (everything they query must be a metric pgvault exports), and promtool.

:func:`metric_names` is a small lexical extractor, not a parser: enough for the expressions we
write, and tested on the constructs they use (tests/unit/test_alerts.py).  :func:`promtool` comes
with Debian's ``prometheus`` package (scripts/setup.sh installs it); without it the tests that need
it skip, unless ``PGVAULT_REQUIRE_PROMTOOL=1`` (scripts/test.sh sets it under ``CI=true``).
"""

from __future__ import annotations

import os
import re
import shutil

import pytest

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset",
             "inf", "nan", "atan2"}
_DURATION = re.compile(r"^\d+(ms|s|m|h|d|w|y)$")


# A selector, grouping or template on the label "job": pgvault's series name their job in
# "pgvault_job"; "job" is the scrape target's (Prometheus and the Pushgateway set it).
TARGET_JOB_LABEL = re.compile(r"\bjob\s*(=~|!~|!=|=)|\$labels\.job\b|\{\{\s*job\s*\}\}|\bby\s*\(\s*job\b")


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, aggregation
    modifiers, keywords, label names/values (inside {...}) or durations (inside [...])."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r" \1 ", text)  # label lists
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = m.group(0)
        after = text[m.end():].lstrip()
        if after.startswith("(") or re.match(r"(by|without)\b", after):  # a function or an aggregation
            continue
        if word.lower() in _KEYWORDS or _DURATION.match(word):
            continue
        if m.start() > 0 and (text[m.start() - 1].isdigit() or text[m.start() - 1] == "."):
            continue  # the exponent of 1e9
        names.add(word)
    return names


def promtool() -> str:
    """promtool's path; skips the test (fails it under PGVAULT_REQUIRE_PROMTOOL) when it is missing."""
    path = shutil.which("promtool")
    if path is None:
        reason = "promtool (Debian package prometheus) is not installed"
        if os.environ.get("PGVAULT_REQUIRE_PROMTOOL", "") not in ("", "0"):
            pytest.fail(f"{reason} (PGVAULT_REQUIRE_PROMTOOL is set)", pytrace=False)
        pytest.skip(f"{reason}; set PGVAULT_REQUIRE_PROMTOOL=1 to make this a failure")
    return path
