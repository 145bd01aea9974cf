"""Job notifications from the CLI: :func:`notify_job`, which ``record_job`` (cli/metrics.py) calls
after every scheduled job, and ``pgvault notify --test``, which sends a test message so that
on-call can check a webhook before the night it matters.

The webhook URLs come from the environment only (``PGVAULT_NOTIFY_WEBHOOK_URL``,
``PGVAULT_NOTIFY_SLACK_WEBHOOK_URL``) and are named as ``scheme://host/...`` wherever a message
needs them.  docs/notifications.md documents the settings and the payload."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import TYPE_CHECKING, Any

from pgvault import log

if TYPE_CHECKING:
    from pgvault.config import NotifyOptions, Settings
    from pgvault.operations.notify import Delivery
    from pgvault.repository.jobs import JobRecord, JobRun

_NOT_CONFIGURED = "no notification webhook is configured: set PGVAULT_NOTIFY_WEBHOOK_URL and/or PGVAULT_NOTIFY_SLACK_WEBHOOK_URL"


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("notify", parents=[common], help="job notifications: send a test message to the configured webhooks",
                       description="Scheduled jobs notify on their own (notify.* settings, docs/notifications.md); "
                       "this command only tests the webhooks, which are set in the environment only: "
                       "PGVAULT_NOTIFY_WEBHOOK_URL and/or PGVAULT_NOTIFY_SLACK_WEBHOOK_URL.")
    p.add_argument("--test", action="store_true", help="send a test notification to every configured webhook")
    p.set_defaults(func=run)


def environment_options() -> NotifyOptions:
    """The notify.* settings from the environment alone: a job whose configuration did not load
    still notifies its failure when the webhook is set in the environment (where it must be)."""
    from dataclasses import replace

    from pgvault.config import NotifyOptions, environment_notify

    opts = environment_notify()
    # Unvalidated (load_settings did not get this far): keep the time bound sane.
    return replace(opts, timeout=opts.timeout if opts.timeout > 0 else NotifyOptions().timeout,
                   retries=min(max(opts.retries, 0), 10))


def notify_job(settings: Settings | None, cluster: str, run: JobRun, previous: JobRecord | None) -> None:
    """Notify ``run`` of ``cluster``'s job if the settings want it (event, job filter).

    ``previous`` is the job's record before this run, which tells a recovery from a success.
    Never raises for a receiver's sake: failed deliveries are warnings without the URL."""
    from pgvault.policy.notify import event_for, job_payload, wanted

    opts = settings.notify if settings is not None else environment_options()
    if not opts.enabled or not wanted(run.job, opts.jobs):
        return
    event = event_for(run.ok, previous, opts.events)
    if event is None:
        return
    from pgvault.operations.notify import send

    doc = job_payload(cluster, run, event, previous=previous)
    _log(send(opts, doc), f"the {run.job} {event}")


def _log(deliveries: list[Delivery], what: str) -> None:
    logger = log.get()
    for d in deliveries:
        if d.ok:
            logger.info("notified %s (%s) of %s: %s", d.kind, d.where, what, d.detail)
        else:
            logger.warning("could not notify %s (%s) of %s (%d attempt(s), %.1fs): %s; the job's outcome is unchanged",
                           d.kind, d.where, what, d.attempts, d.seconds, d.detail)


def run(args: argparse.Namespace) -> int:
    import pgvault
    from pgvault.cli import emit, settings_from
    from pgvault.errors import ConfigError, UsageError
    from pgvault.operations.notify import send, targets
    from pgvault.output import table
    from pgvault.policy.notify import TEST, job_payload
    from pgvault.procs import hostname
    from pgvault.repository.jobs import JobRun

    if not args.test:
        raise UsageError("nothing to do: 'pgvault notify --test' sends a test notification to the configured webhooks")
    settings = settings_from(args)
    if not targets(settings.notify):
        raise ConfigError([_NOT_CONFIGURED])
    now = dt.datetime.now(dt.UTC)
    doc = job_payload(settings.cluster, JobRun(job="test", started_at=now, finished_at=now, exit_code=0, host=hostname(),
                                               pgvault_version=pgvault.__version__), TEST)
    deliveries = send(settings.notify, doc)
    payload = {"cluster": settings.cluster, "deliveries": [d.to_json() for d in deliveries]}

    def human() -> str:
        return table(["target", "where", "result", "attempts", "took", "detail"],
                     [(d.kind, d.where, "ok" if d.ok else "FAILED", d.attempts, f"{d.seconds:.1f}s", d.detail)
                      for d in deliveries])

    failed = [d for d in deliveries if not d.ok]
    if failed:
        # A webhook that does not take the message is a configuration problem (wrong or revoked
        # URL, a receiver that is not there): exit 2, every failed target listed.
        raise ConfigError([f"notify: {d.kind} ({d.where}): {d.detail}" for d in failed],
                          hint="check PGVAULT_NOTIFY_WEBHOOK_URL / PGVAULT_NOTIFY_SLACK_WEBHOOK_URL and that "
                          "the receiver is reachable from this host").with_report("notify_test", payload, human)
    emit(args, "notify_test", payload, human)
    return 0
