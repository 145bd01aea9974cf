"""``pgvault runbook``: write the on-call runbook for this configuration (Markdown or HTML)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pgvault.cli import emit, settings_from
from pgvault.errors import UsageError


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("runbook", parents=[common],
                       help="write the on-call runbook for this configuration: where backups are, restores, alerts")
    p.add_argument("--format", dest="fmt", choices=("markdown", "html"), default="markdown",
                   help="markdown (default) or a self-contained HTML page")
    p.add_argument("--output", "-o", metavar="FILE", help="write it into FILE (replaced atomically) instead of stdout")
    p.add_argument("--config-path", metavar="PATH",
                   help="the configuration file's path on the hosts that run the commands "
                        "(default: the file read now, --config or $PGVAULT_CONFIG)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pgvault.runbook import render

    # Described, not used: the age identity file lives on restore hosts, not where this runs.
    settings = settings_from(args, check_local_files=False)
    shown = args.config_path or (settings.source if settings.source != "defaults" else None)
    text = render(settings, shown, args.fmt)
    if args.output is None:
        if args.json:
            emit(args, "runbook", {"output": None, "text": text}, lambda: text)
        else:
            sys.stdout.write(text)
        return 0
    from pgvault.fs import write_atomic

    try:
        write_atomic(Path(args.output), text.encode("utf-8"), durable=False)
    except OSError as e:
        raise UsageError(f"cannot write the runbook to {args.output}: {e.strerror or e}") from None
    emit(args, "runbook", {"output": args.output, "bytes": len(text.encode("utf-8")), "format_name": args.fmt},
         lambda: f"runbook for cluster {settings.cluster!r} written to {args.output} ({args.fmt})")
    return 0
