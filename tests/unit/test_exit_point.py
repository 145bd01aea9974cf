"""The one exit point (cli.main -> _outcome): a command that fails after producing its full
answer raises an error carrying that report; the exit point prints the report (one JSON document
with --json), the error on stderr, and returns the error's exit code (issue 9, item 7)."""

from __future__ import annotations

import json
import signal
from typing import Any

import pytest

from pgvault.cli import _outcome, interrupts
from pgvault.errors import IntegrityError, VerificationError


def _failed_verify() -> IntegrityError:
    payload = {"ok": False, "failures": 2}
    return IntegrityError("verify found 2 problem(s) in /repo").with_report("verify", payload, lambda: "REPORT TABLE")


def test_json_gives_exactly_the_report_document_and_the_error_on_stderr(capsys: Any) -> None:
    code, err = _outcome(_failed_verify(), True, None)
    out, stderr = capsys.readouterr()
    doc = json.loads(out)  # one document: json.loads fails on two
    assert code == 6 and isinstance(err, IntegrityError)
    assert doc["kind"] == "verify" and doc["failures"] == 2 and doc["format"] == 1
    assert stderr.strip() == "pgvault: error: verify found 2 problem(s) in /repo"


def test_people_get_the_rendered_report_then_the_error(capsys: Any) -> None:
    code, _err = _outcome(_failed_verify(), False, None)
    out, stderr = capsys.readouterr()
    assert code == 6 and out == "REPORT TABLE\n"
    assert "pgvault: error: verify found 2 problem(s)" in stderr


def test_an_error_without_a_report_is_the_error_document(capsys: Any) -> None:
    code, _err = _outcome(VerificationError("rows differ"), True, None)
    doc = json.loads(capsys.readouterr().out)
    assert code == 9 and doc["kind"] == "error" and doc["error"] == "verification" and doc["exit_code"] == 9


def test_a_report_is_still_printed_when_a_signal_stopped_the_command(capsys: Any,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(interrupts._state, "signum", signal.SIGTERM)
    failed = VerificationError("drill d1 FAILED: interrupted").with_report(
        "drill", {"drill": {"ok": False, "error": "interrupted by SIGTERM"}}, lambda: "drill d1: FAILED")
    code, err = _outcome(failed, True, None)
    out, stderr = capsys.readouterr()
    assert code == 143 and err.kind == "terminated"
    assert json.loads(out)["drill"]["error"] == "interrupted by SIGTERM"
    assert "interrupted by SIGTERM" in stderr
