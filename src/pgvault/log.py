"""Logging: plain lines on a terminal, JSON lines otherwise, with secrets redacted.

Redaction is the last line of defence; code should never log secrets in the first place.  The
filter masks anything that looks like an age secret key, a ``password=`` conninfo value, a Slack
webhook's path (its token), or a secret pulled from the environment (AWS, PGPASSWORD, the age
identity, the notification webhook URLs).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time

LOGGER_NAME = "pgvault"

_PATTERNS = [
    re.compile(r"AGE-SECRET-KEY-1[0-9A-Z]+"),
    re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|(?:\\.|\S)+)", re.IGNORECASE),
    re.compile(r"(postgres(?:ql)?://[^:/@\s]*:)([^@\s]+)(@)"),
    re.compile(r"(hooks\.slack\.com/)[^\s\"'<>]+"),
]
# Environment variables whose values are secrets wherever they appear.
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "PGPASSWORD", "PGVAULT_ENCRYPTION_AGE_IDENTITY",
               "PGVAULT_NOTIFY_WEBHOOK_URL", "PGVAULT_NOTIFY_SLACK_WEBHOOK_URL")


def redact(text: str) -> str:
    """Mask secrets in ``text``."""
    text = _PATTERNS[0].sub("AGE-SECRET-KEY-<redacted>", text)
    text = _PATTERNS[1].sub(lambda m: m.group(1) + "<redacted>", text)
    text = _PATTERNS[2].sub(lambda m: m.group(1) + "<redacted>" + m.group(3), text)
    for var in _SECRET_ENV:
        secret = os.environ.get(var)
        if secret and len(secret) >= 4:
            text = text.replace(secret, "<redacted>")
    text = _PATTERNS[3].sub(lambda m: m.group(1) + "<redacted>", text)
    return text


def redact_url(url: str) -> str:
    """``scheme://host[:port]/...``: how a URL that may carry a token in its path, query or user
    info (a webhook) is named in messages (ASCII: JSON log lines would escape an ellipsis)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<url>"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme or '?'}://{host}{port}/..."


class RedactingFilter(logging.Filter):
    """Rewrites each record's message with :func:`redact`."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            # Formatters reuse exc_text when set, so the traceback is redacted too.
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
        }
        return json.dumps(doc)


def setup(level: str = "info", *, json_lines: bool | None = None) -> logging.Logger:
    """Configure the ``pgvault`` logger on stderr; JSON lines when stderr is not a terminal."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    use_json = (not sys.stderr.isatty()) if json_lines is None else json_lines
    handler.setFormatter(_JsonFormatter() if use_json else logging.Formatter("pgvault: %(message)s"))
    handler.addFilter(RedactingFilter())
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    return logger


def get() -> logging.Logger:
    """The pgvault logger."""
    return logging.getLogger(LOGGER_NAME)
