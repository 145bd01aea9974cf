"""``pgvault runbook``: the generated runbook is current, its commands are real, its alerts are the
rules' alerts, it holds no secret, and its HTML is a self-contained, well-formed page."""

from __future__ import annotations

import contextlib
import html.parser
import io
import re
import shlex
from pathlib import Path

import pytest
import yaml

from pgvault.cli import _command_name, build_parser
from pgvault.config import S3Options, Settings, SmokeQuery, load_settings
from pgvault.runbook import build, render
from pgvault.runbook.alerts import ALERTS
from pgvault.runbook.document import Heading, slug

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "examples" / "pgvault.yaml"
SHIPPED = ROOT / "docs" / "runbook.md"
RULES = ROOT / "deploy" / "prometheus" / "alerts.yaml"
INSTALLED_AT = "/etc/pgvault/pgvault.yaml"  # where the example says hosts keep the file
REGENERATE = (f"env -u PGVAULT_POSTGRES_BIN_DIRS pgvault --config {EXAMPLE.relative_to(ROOT)} runbook "
              f"--config-path {INSTALLED_AT} --output {SHIPPED.relative_to(ROOT)}   "
              "(from the repository root, no other PGVAULT_* variable set)")


def example_settings() -> Settings:
    return load_settings(str(EXAMPLE), environ={}, check_local_files=False)


VARIANTS = {
    "example": (example_settings, INSTALLED_AT),
    "local-plain": (lambda: Settings(cluster="db1", repository_url="/srv/pgvault repo", compression="none"), None),
    "gzip-aws-profile": (lambda: Settings(
        cluster="orders", repository_url="s3://bk/pg", s3=S3Options(region="us-east-1", profile="backup"),
        compression="gzip", age_recipients=("age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p",),
        smoke_queries=(SmokeQuery("o", "SELECT count(*) FROM orders WHERE total > 0", "shop", min=1),)),
        "/opt/pgvault/conf.yaml"),
}


def test_shipped_runbook_is_generated_from_the_example_configuration() -> None:
    fresh = render(example_settings(), INSTALLED_AT)
    assert SHIPPED.read_text(encoding="utf-8") == fresh, f"docs/runbook.md is stale; regenerate it: {REGENERATE}"


# --- every command it prints parses with pgvault's own parser -------------------------------------

_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_OPERATORS = {"|", "||", "&&", ";", "&", "(", ")", ">", "<", ">>"}


def _code_lines(markdown: str) -> list[tuple[str, bool]]:
    """The lines of fenced code blocks (continuation lines joined), plus inline code spans that
    start with ``pgvault`` (flagged True: prose may name a command without its arguments)."""
    out: list[tuple[str, bool]] = []
    fence: str | None = None
    pending = ""
    for line in markdown.splitlines():
        m = re.match(r"^(`{3,})", line)
        if m and (fence is None or m.group(1) == fence):
            fence = m.group(1) if fence is None else None
            continue
        if fence is None:
            out += [(span, True) for span in re.findall(r"`([^`]+)`", line) if span.startswith("pgvault ")]
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        out.append((pending + line, False))
        pending = ""
    return out


def pgvault_commands(markdown: str) -> list[tuple[str, list[str], bool]]:
    """Every ``pgvault`` invocation (line, argv after ``pgvault``), also inside quoted strings
    (restore_command = '... pgvault wal fetch %f %p'), and whether it was an inline mention. A
    ``pgvault`` word anywhere but at the start of a command (after environment assignments) is an
    error: nothing may slip past the check."""
    found: list[tuple[str, list[str], bool]] = []

    def scan(text: str, origin: str, inline: bool) -> None:
        lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        try:
            tokens = list(lexer)
        except ValueError as e:
            assert "pgvault" not in text, f"cannot split {origin!r}: {e}"
            return
        segment: list[str] = []
        for tok in [*tokens, ";"]:
            if tok not in _OPERATORS:
                segment.append(tok)
                continue
            if "pgvault" in segment:
                i = segment.index("pgvault")
                assert all(_ASSIGNMENT.match(t) for t in segment[:i]), f"pgvault is not the command in {origin!r}"
                found.append((origin, segment[i + 1:], inline))
            for t in segment:
                if t != "pgvault" and re.search(r"(^|\s)pgvault\s", t):
                    scan(t, origin, inline)
            segment = []

    for line, inline in _code_lines(markdown):
        scan(line, line, inline)
    return found


def _parse(argv: list[str], inline: bool = False) -> str | None:
    """None when ``pgvault ARGV`` parses and names a command, else argparse's complaint.  An inline
    mention (`pgvault wal push` in a sentence) may leave out required arguments, nothing else."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = build_parser(_command_name(argv)).parse_args(argv)
    except SystemExit:
        complaint = err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else "exit"
        return None if inline and "arguments are required" in complaint else complaint
    return None if getattr(args, "func", None) else "no command"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_command_in_the_runbook_parses(variant: str) -> None:
    make, path = VARIANTS[variant]
    commands = pgvault_commands(render(make(), path))
    assert len(commands) > 60, len(commands)
    bad = [f"{line}\n    -> {problem}" for line, argv, inline in commands if (problem := _parse(argv, inline))]
    assert not bad, "runbook commands pgvault does not accept:\n" + "\n".join(bad)
    verbs = {_command_name(argv) for _l, argv, _i in commands}
    assert {"status", "list", "show", "restore", "restore-cluster", "restore-point", "verify", "drill", "backup",
            "basebackup", "expire", "config", "wal", "runbook"} <= verbs


def test_the_extractor_catches_what_does_not_parse() -> None:
    doc = ("```sh\npgvault restore latest --table x   # no --database\nx=1 pgvault status --bogus | less\n"
           "restore_command = 'pgvault wal fetch %f'\npgvault show \\\n  latest\n```\n"
           "`pgvault drill --kind nope` and `pgvault wal push` inline\n")
    commands = pgvault_commands(doc)
    assert [(argv, inline) for _l, argv, inline in commands] == [
        (["restore", "latest", "--table", "x"], False), (["status", "--bogus"], False), (["wal", "fetch", "%f"], False),
        (["show", "latest"], False), (["drill", "--kind", "nope"], True), (["wal", "push"], True)]
    assert [_parse(argv, inline) is None for _l, argv, inline in commands] == [False, False, False, True, False, True]
    with pytest.raises(AssertionError, match="not the command"):
        pgvault_commands("```sh\nsudo pgvault status\n```\n")


# --- alerts ---------------------------------------------------------------------------------------

def _rules() -> dict[str, str]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return {r["alert"]: r["labels"]["severity"] for g in doc["groups"] for r in g["rules"] if "alert" in r}


def test_one_section_per_alert_of_the_rules() -> None:
    markdown = SHIPPED.read_text(encoding="utf-8")
    sections = re.findall(r"^### Alert: (\S+)$", markdown, flags=re.MULTILINE)
    assert len(sections) == len(set(sections))
    assert set(sections) == set(_rules())
    assert {a.name for a in ALERTS} == set(sections)
    for name in sections:  # the anchor GitHub gives the heading, which annotations link to
        assert slug(f"Alert: {name}") == f"alert-{name.lower()}"


def test_alert_severities_match_the_rules() -> None:
    rules = _rules()
    assert {a.name: a.severity for a in ALERTS if a.name in rules} == rules


# --- no secrets -----------------------------------------------------------------------------------

def test_no_secret_reaches_the_runbook(tmp_path: Path) -> None:
    key = "AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ"
    config = tmp_path / "pgvault.yaml"
    config.write_text(yaml.safe_dump({
        "cluster": "c1", "repository": {"url": "s3://bucket/p", "s3": {"endpoint_url": "https://s3.example:9000"}},
        "postgres": {"dsn": "host=db1 user=backup password=Sup3rSecretPw dbname=app"},
        "drill": {"target_dsn": "postgresql://drill:Dr1llSecret@scratch/postgres"},
        "metrics": {"textfile": "/var/lib/node_exporter/pgvault.prom"},
    }))
    env = {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEYID", "AWS_SECRET_ACCESS_KEY": "s3cr3tAwsKeyValue",
           "PGVAULT_ENCRYPTION_AGE_IDENTITY": key, "PGPASSWORD": "PgPassw0rdEnv"}
    settings = load_settings(str(config), environ=env, check_local_files=False)
    for fmt in ("markdown", "html"):
        text = render(settings, str(config), fmt)
        for secret in ("Sup3rSecretPw", "Dr1llSecret", "AKIAEXAMPLEKEYID", "s3cr3tAwsKeyValue", key, "PgPassw0rdEnv",
                       "password="):
            assert secret not in text, (fmt, secret)
        assert "host=db1" in text and "AWS_SECRET_ACCESS_KEY" in text and "https://s3.example:9000" in text


def test_the_identity_file_need_not_exist_where_the_runbook_is_made() -> None:
    from pgvault.errors import ConfigError

    with pytest.raises(ConfigError, match="age_identity_file"):
        load_settings(str(EXAMPLE), environ={})
    assert example_settings().age_identity_file == "/etc/pgvault/age-key.txt"


# --- HTML -----------------------------------------------------------------------------------------

class _Page(html.parser.HTMLParser):
    VOID = {"meta", "input", "br", "hr", "img", "link"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.h2: list[str] = []
        self.text: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)
        if tag == "h2":
            self.text = []

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
            return
        self.stack.pop()
        if tag == "h2":
            self.h2.append("".join(self.text))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_html_is_a_self_contained_well_formed_page(variant: str) -> None:
    make, path = VARIANTS[variant]
    settings = make()
    page = _Page()
    page.feed(render(settings, path, "html"))
    page.close()
    assert not page.errors and not page.stack, (page.errors, page.stack)
    tags = [t for t, _a in page.tags]
    assert tags[0] == "html" and "body" in tags and not {"script", "link", "img", "iframe"} & set(tags)
    assert all(not a.get("src") for _t, a in page.tags)
    assert all(a["href"].startswith("#") for t, a in page.tags if t == "a" and a.get("href"))
    blocks = build(settings, path)
    assert page.h2 == [b.text.replace("`", "") for b in blocks if isinstance(b, Heading) and b.level == 2]
    ids = {a.get("id") for _t, a in page.tags}
    assert {"alert-pgvaultbackupmissing", "before-a-restore", "accidental-delete-update-or-drop-table"} <= ids
    assert all(h[1:] in ids for _t, a in page.tags if (h := a.get("href") or "").startswith("#")), "dangling link"


def test_html_escapes_everything() -> None:
    settings = Settings(cluster="<b>evil&co", repository_url="/srv/<i>repo",
                        smoke_queries=(SmokeQuery("lt", "SELECT 1 < 2 AND '<x>' = '<x>'", "app", expect="True"),))
    page = render(settings, "/etc/<p>.yaml", "html")
    assert "<b>evil" not in page and "<i>repo" not in page and "<p>.yaml" not in page and "'<x>'" not in page
    assert "&lt;b&gt;evil&amp;co" in page and "SELECT 1 &lt; 2" in page


def test_the_environment_it_prints_for_a_lost_config_file_is_the_configuration() -> None:
    """Loss of a region: 'without the configuration file, the settings as environment variables'."""
    from pgvault.runbook.facts import facts_from

    s = example_settings()
    again = load_settings(None, environ=dict(facts_from(s, None).environment()), check_local_files=False)
    for attr in ("cluster", "repository_url", "s3", "age_recipients", "age_identity_file", "compression"):
        assert getattr(again, attr) == getattr(s, attr), attr
