"""deploy/systemd and deploy/cron: the units pass ``systemd-analyze verify``, the drill timer fires
on exactly the first Saturdays (systemd's own calendar arithmetic against policy/schedule.py), no
secret is in a unit or the crontab, and every command is a valid pgvault command line."""

from __future__ import annotations

import configparser
import datetime as dt
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from pgvault.cli import build_parser
from pgvault.policy.schedule import MonthlyWeekday, parse_day_rule

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SYSTEMD = DEPLOY / "systemd"
CRON = DEPLOY / "cron" / "pgvault.cron"
JOBS = ("backup", "basebackup", "expire", "verify", "drill")
FIRST_SATURDAY = MonthlyWeekday(1, 5)
ANALYZE = shutil.which("systemd-analyze")


def _unit(path: Path) -> configparser.RawConfigParser:
    p = configparser.RawConfigParser(strict=False, interpolation=None)
    p.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    p.read_string(path.read_text())
    return p


def _first_saturdays(start: dt.date, months: int) -> list[dt.date]:
    out, day = [], start
    while len(out) < months:
        day = FIRST_SATURDAY.next_due(day)
        out.append(day)
        day += dt.timedelta(days=1)
    return out


def test_a_service_and_a_timer_for_every_job() -> None:
    names = {p.name for p in SYSTEMD.iterdir()}
    assert names == {f"pgvault-{j}.{s}" for j in JOBS for s in ("service", "timer")} | {"pgvault.env.example", "README.md"}
    for job in JOBS:
        svc, timer = _unit(SYSTEMD / f"pgvault-{job}.service"), _unit(SYSTEMD / f"pgvault-{job}.timer")
        assert svc["Service"]["Type"] == "oneshot" and svc["Service"]["User"] in ("pgvault", "postgres")
        assert svc["Service"]["EnvironmentFile"] == "/etc/pgvault/pgvault.env"
        assert svc["Service"]["NoNewPrivileges"] == "yes" and svc["Service"]["ProtectSystem"] == "strict"
        assert timer["Timer"]["OnCalendar"].endswith(" UTC") and timer["Timer"]["Persistent"] == "true"
        assert timer["Install"]["WantedBy"] == "timers.target"


@pytest.mark.parametrize("job", JOBS)
def test_every_exec_start_is_a_valid_pgvault_command(job: str) -> None:
    argv = shlex.split(_unit(SYSTEMD / f"pgvault-{job}.service")["Service"]["ExecStart"])
    assert argv[0] == "/usr/local/bin/pgvault" and argv[1] == job
    assert build_parser(argv[1]).parse_args(argv[1:]).command == job


def test_no_secret_in_a_unit_and_the_identity_only_where_it_decrypts() -> None:
    for job in JOBS:
        text = (SYSTEMD / f"pgvault-{job}.service").read_text()
        env_lines = [ln for ln in text.splitlines() if ln.startswith("Environment=")]
        assert not any(w in ln for ln in env_lines for w in ("PASSWORD", "SECRET", "ACCESS_KEY")), job
        assert ("LoadCredential=age-identity:" in text) == (job in ("verify", "drill")), job
    example = (SYSTEMD / "pgvault.env.example").read_text()
    assert "0600" in example
    values = dict(ln.split("=", 1) for ln in example.splitlines() if ln and not ln.startswith("#"))
    assert set(values) == {"PGPASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_accepts_every_unit(tmp_path: Path) -> None:
    # verify insists that ExecStart's program exists: point the copies at a stand-in.
    stub = tmp_path / "pgvault"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    units = []
    for path in sorted(SYSTEMD.glob("pgvault-*.*")):
        copy = tmp_path / path.name
        copy.write_text(path.read_text().replace("/usr/local/bin/pgvault", str(stub)))
        units.append(copy.name)
    assert ANALYZE is not None
    r = subprocess.run([ANALYZE, "verify", "--man=no", *units], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r.stderr  # warnings (unknown keys) too
    # and it does complain about what it should (the test would pass on a no-op otherwise)
    (tmp_path / "pgvault-backup.service").write_text((tmp_path / "pgvault-backup.service").read_text() + "Bogus=1\n")
    r = subprocess.run([ANALYZE, "verify", "--man=no", "pgvault-backup.service"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert "Unknown key" in r.stderr


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
def test_the_drill_timer_fires_on_exactly_the_first_saturdays() -> None:
    """systemd ANDs the weekday with the day of month: 'Sat *-*-01..07' is the first Saturday."""
    spec = _unit(SYSTEMD / "pgvault-drill.timer")["Timer"]["OnCalendar"]
    assert ANALYZE is not None
    r = subprocess.run([ANALYZE, "calendar", "--iterations=60", "--base-time=2024-01-01 00:00:00 UTC", spec],
                       capture_output=True, text=True, timeout=60, env={"LC_ALL": "C", "TZ": "UTC", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    fires = [dt.datetime.strptime(" ".join(line.split()[-3:-1]), "%Y-%m-%d %H:%M:%S")
             for line in r.stdout.splitlines() if line.strip().startswith(("Next elapse:", "Iter. #"))]
    assert len(fires) == 60  # five years, leap years 2024 and 2028 included
    assert [f.date() for f in fires] == _first_saturdays(dt.date(2024, 1, 1), 60)
    assert {(f.hour, f.minute) for f in fires} == {(10, 0)}


# --- cron ---------------------------------------------------------------------------------------


def _cron_entries() -> list[tuple[list[str], str, list[str]]]:
    """(the five time fields, user, command argv) of every job line."""
    out = []
    for line in CRON.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#") or "=" in line.split()[0]:
            continue
        fields = line.split(None, 6)
        out.append((fields[:5], fields[5], shlex.split(fields[6])))
    return out


def _field(spec: str, value: int) -> bool:
    if spec == "*":
        return True
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        if int(lo) <= value <= int(hi or lo):
            return True
    return False


def _cron_fires(fields: list[str], day: dt.date) -> bool:
    """Cron's day rule: when both day fields are restricted, EITHER may match (man 5 crontab)."""
    _, _, dom, month, dow = fields
    if not _field(month, day.month):
        return False
    cron_dow = (day.weekday() + 1) % 7  # cron: 0 = Sunday
    if dom != "*" and dow != "*":
        return _field(dom, day.day) or _field(dow, cron_dow)
    return _field(dom, day.day) and _field(dow, cron_dow)


def test_cron_entries_are_valid_pgvault_commands_without_secrets() -> None:
    entries = _cron_entries()
    assert sorted(argv[argv.index("pgvault") + 1] for _, _, argv in entries) == sorted(JOBS)
    text = CRON.read_text()
    assert "CRON_TZ=UTC" in text and "PGPASSWORD=" not in text and "AWS_SECRET_ACCESS_KEY=" not in text
    for _, user, argv in entries:
        i = argv.index("pgvault")
        assert all("=" in a for a in argv[:i])  # only VAR=value before the program
        args = build_parser(argv[i + 1]).parse_args(argv[i + 1:])
        assert args.command == argv[i + 1]
        assert user == ("postgres" if args.command == "basebackup" else "pgvault")
        has_identity = any(a.startswith("PGVAULT_ENCRYPTION_AGE_IDENTITY_FILE=") for a in argv[:i])
        assert has_identity == (args.command in ("verify", "drill"))


def test_cron_runs_the_drill_on_exactly_the_first_saturdays() -> None:
    [(fields, _, argv)] = [e for e in _cron_entries() if "drill" in e[2]]
    rule = parse_day_rule(argv[argv.index("--only-on") + 1])
    days = [dt.date(2024, 1, 1) + dt.timedelta(days=n) for n in range(5 * 366)]
    started = [d for d in days if _cron_fires(fields, d)]
    assert all(d.weekday() == 5 for d in started)  # every Saturday, no other day
    assert [d for d in started if rule.is_due(d)] == [d for d in days if FIRST_SATURDAY.is_due(d)]
    # What the naive schedule would have done: both day fields restricted, so cron ORs them.
    naive = [d for d in days if _cron_fires(["0", "10", "1-7", "*", "6"], d)]
    assert len(naive) > 2 * len([d for d in days if FIRST_SATURDAY.is_due(d)])
    assert any(d.weekday() != 5 for d in naive) and any(d.day > 7 for d in naive)
