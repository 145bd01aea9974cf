"""``pgvault runbook`` end to end: a config file in, the runbook out (stdout, --output, HTML)."""

from __future__ import annotations

import html.parser
import json
from pathlib import Path

from support.cli import clean_env, pgvault


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "pgvault.yaml"
    config.write_text(
        "cluster: shop-eu\n"
        "repository: {url: 's3://acme-backups/pg', s3: {endpoint_url: 'https://s3.acme.test', region: eu-west-1}}\n"
        "postgres: {dsn: 'host=db.acme.test user=backup password=NotInTheRunbook'}\n"
        "encryption: {age_recipients: [age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p],\n"
        "             age_identity_file: /nonexistent/here/age-key.txt}\n"
        "drill: {rto: 45m}\n")
    return config


def test_runbook_markdown_to_stdout_and_file(tmp_path: Path) -> None:
    config = _config(tmp_path)
    env = clean_env()
    res = pgvault(["--config", str(config), "runbook"], env)
    md = res.stdout
    assert md.startswith("# pgvault runbook: cluster `shop-eu`")
    assert "s3://acme-backups/pg/shop-eu/logical/" in md and "https://s3.acme.test" in md and "45m" in md
    assert f"export PGVAULT_CONFIG={config}" in md
    assert "NotInTheRunbook" not in md and "### Alert: PgvaultBackupMissing" in md

    out = tmp_path / "out" / "runbook.md"
    out.parent.mkdir()
    res = pgvault(["runbook", "--config", str(config), "--config-path", "/etc/pgvault/pgvault.yaml", "-o", str(out),
                   "--json"], env)
    doc = json.loads(res.stdout)
    assert (doc["kind"], doc["output"]) == ("runbook", str(out))
    text = out.read_text(encoding="utf-8")
    assert "export PGVAULT_CONFIG=/etc/pgvault/pgvault.yaml" in text and str(config) not in text
    assert text.count("### Alert: ") == md.count("### Alert: ")


def test_runbook_html(tmp_path: Path) -> None:
    config = _config(tmp_path)
    out = tmp_path / "runbook.html"
    pgvault(["--config", str(config), "runbook", "--format", "html", "--output", str(out)], clean_env())
    page = out.read_text(encoding="utf-8")
    h2: list[str] = []

    class Parser(html.parser.HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            if tag == "h2":
                h2.append(dict(attrs)["id"] or "")

    Parser().feed(page)
    assert page.startswith("<!DOCTYPE html>") and "shop-eu" in page and "NotInTheRunbook" not in page
    assert {"alerts", "disaster-scenarios", "restore-a-database", "before-a-restore"} <= set(h2)


def test_runbook_without_a_configuration_file_and_a_bad_output(tmp_path: Path) -> None:
    env = clean_env(PGVAULT_REPOSITORY_URL=str(tmp_path / "repo"), PGVAULT_CLUSTER="envonly")
    md = pgvault(["runbook"], env).stdout
    assert f"export PGVAULT_REPOSITORY_URL={tmp_path / 'repo'}" in md and "cluster `envonly`" in md
    res = pgvault(["runbook", "--output", str(tmp_path / "missing" / "dir" / "x.md")], env, check=False)
    assert res.returncode == 2 and "cannot write the runbook" in res.stderr
