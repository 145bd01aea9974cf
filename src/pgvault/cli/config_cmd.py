"""``pgvault config check``: validate a configuration and list every problem at once."""

from __future__ import annotations

import argparse
from typing import Any

from pgvault.cli import emit
from pgvault.config import describe, load_settings
from pgvault.log import redact_url


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("config", parents=[common], help="configuration tools")
    csub = p.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    c = csub.add_parser("check", parents=[common], help="validate the configuration (file + environment)")
    c.set_defaults(func=run_check)
    k = csub.add_parser("keys", parents=[common], help="list every setting and its environment variable")
    k.set_defaults(func=run_keys)


def run_check(args: argparse.Namespace) -> int:
    # Raises ConfigError listing every problem; unlike other commands' loads, this one also
    # parses the age secret key(s), so a damaged key file shows up before the restore that needs it.
    s = load_settings(getattr(args, "config", None), check_identities=True, overrides={
        "cluster": getattr(args, "cluster", None), "repository.url": getattr(args, "repository", None),
        "postgres.dsn": getattr(args, "dsn", None)})
    where = {"webhook": redact_url(s.notify.webhook_url) if s.notify.webhook_url else None,
             "slack": redact_url(s.notify.slack_webhook_url) if s.notify.slack_webhook_url else None}
    payload = {
        "valid": True,
        "source": s.source,
        "cluster": s.cluster,
        "repository": s.repository_url,
        "compression": s.compression,
        "encryption": "age" if s.age_recipients else "none",
        "age_recipients": len(s.age_recipients),
        # Where notifications go, as scheme://host/... only: the URLs are credentials.
        "notify": {**where, "events": list(s.notify.events), "jobs": list(s.notify.jobs) or "all"},
        # What every object written gets (the bucket's own lock is checked by the first write and by status).
        "object_lock": rule.to_json() if (rule := s.object_lock_rule()) else None,
        # Every configured repository (validated like the primary); "primary" is repository.*.
        "repositories": [{"name": r.name, "url": r.url} for r in s.all_repositories()],
    }
    hooks = [f"{k} {v}" for k, v in where.items() if v]
    emit(args, "config_check", payload, lambda: f"configuration OK ({s.source}): cluster {s.cluster!r}, "
         f"repository {s.repository_url}, compression {s.compression}, "
         f"encryption {'age (' + str(len(s.age_recipients)) + ' recipient(s))' if s.age_recipients else 'off'}, "
         f"notifications {'to ' + ' and '.join(hooks) + ' on ' + (', '.join(s.notify.events) or 'no event') if hooks else 'off'}"
         + (f", object lock {rule.mode.lower()} for {rule.source}" if rule else "")
         + "".join(f"\n  repository {r.name}: {r.url}" for r in s.all_repositories()[1:]))
    return 0


def run_keys(args: argparse.Namespace) -> int:
    rows = describe() + [
        ("repositories.<name>.url", "PGVAULT_REPOSITORIES_<NAME>_URL",
         "a further repository (another region's copy, kept by 'repo sync'); --repository <name> selects it"),
        ("repositories.<name>.s3.*", "PGVAULT_REPOSITORIES_<NAME>_S3_*", "its S3 settings, as repository.s3.*"),
    ]
    from pgvault.output import table

    emit(args, "config_keys", {"settings": [{"setting": a, "env": b, "doc": c} for a, b, c in rows]},
         lambda: table(["setting", "environment", "meaning"], rows))
    return 0
