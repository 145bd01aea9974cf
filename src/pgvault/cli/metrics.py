"""``pgvault metrics``: Prometheus metrics (textfile, Pushgateway, HTTP); and the job records that
scheduled commands leave behind (:func:`record_job`, called by ``cli.main``)."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from typing import TYPE_CHECKING, Any

from pgvault import log
from pgvault.errors import PgvaultError, StorageError, UsageError
from pgvault.procs import hostname

if TYPE_CHECKING:
    from pgvault.config import Settings
    from pgvault.repository.jobs import JobRecord, JobRun

# The commands in ``cli.SCHEDULED_JOBS`` record their outcome.  A command may set
# ``args.job_name`` (None: this run is not a job run) and ``args.job_details`` (a small JSON-able
# dict kept in the record, e.g. verify's checked / failures / bytes).


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("metrics", parents=[common], help="Prometheus metrics: textfile, Pushgateway or HTTP /metrics",
                       description="Without an output option the metrics are printed on stdout.")
    p.add_argument("--textfile", metavar="PATH", help="write them into this node_exporter textfile (*.prom), atomically")
    p.add_argument("--push", metavar="URL", help="push them to this Pushgateway (job pgvault, grouped by cluster)")
    p.add_argument("--serve", metavar="ADDR", help="serve HTTP /metrics on HOST:PORT (fresh values on every scrape)")
    p.add_argument("--pgdata", metavar="DIR", help="data directory whose .ready backlog to measure "
                   "(default: the server's data_directory when readable here)")
    p.add_argument("--no-connect", action="store_true", help="do not connect to PostgreSQL (no pg_stat_archiver)")
    p.set_defaults(func=run_metrics)


def run_metrics(args: argparse.Namespace) -> int:
    from pgvault.cli import context_from
    from pgvault.operations.maintenance import metrics
    from pgvault.operations.maintenance.status import ManifestCache, gather_status
    from pgvault.policy.verdict import evaluate

    if args.serve and (args.textfile or args.push):
        raise UsageError("--serve runs until stopped: use it without --textfile / --push")
    ctx = context_from(args)
    cache = ManifestCache()

    def repositories() -> list[metrics.Sample]:
        if len(ctx.settings.all_repositories()) < 2:
            return []
        # A second region: each repository and its lag, also (above all) when the first is down.
        from pgvault.operations.maintenance.repositories import survey

        return metrics.repository_samples(ctx.cluster, survey(ctx.settings))

    def take() -> list[metrics.Sample]:
        snap = gather_status(ctx, pgdata=args.pgdata, connect=not args.no_connect, cache=cache)
        return metrics.snapshot_samples(snap, evaluate(snap)) + repositories()

    if args.serve:
        return _serve(args.serve, ctx.cluster, take, repositories)
    try:
        samples, failure = take(), None
    except PgvaultError as e:  # still publish pgvault_up 0, then fail
        samples, failure = metrics.down_samples(ctx.cluster) + repositories(), e
    if args.textfile:
        try:
            metrics.write_textfile(args.textfile, samples, ctx.cluster)
        except OSError as e:
            raise StorageError(f"cannot write the metrics textfile {args.textfile}: {e.strerror or e}") from None
    if args.push:
        try:
            metrics.push(args.push, samples, ctx.cluster)
        except (OSError, ValueError) as e:
            raise StorageError(f"cannot push metrics to {args.push}: {e}",
                               hint="check the Pushgateway URL (http://host:9091) and that it is reachable") from None
    if not args.textfile and not args.push:
        sys.stdout.write(metrics.render(samples).decode())
    if failure is not None:
        raise failure
    return 0


def parse_addr(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT``, ``:PORT`` (all interfaces) or ``PORT``."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise UsageError(f"--serve {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9187 or :9187")
    return host or "0.0.0.0", number


def _serve(addr: str, cluster: str, take: Any, repositories: Any = list) -> int:
    import signal

    from pgvault.operations.maintenance import metrics

    host, port = parse_addr(addr)
    logger = log.get()

    def scrape() -> list[metrics.Sample]:
        try:
            samples: list[metrics.Sample] = take()
            return samples
        except PgvaultError as e:  # the endpoint stays up and says so: pgvault_up 0
            logger.warning("metrics: cannot read the repository: %s", log.redact(e.message))
            extra: list[metrics.Sample] = repositories()
            return metrics.down_samples(cluster) + extra

    try:
        server, thread = metrics.serve(host, port, scrape)
    except OSError as e:
        raise UsageError(f"--serve {addr}: cannot listen: {e.strerror or e}") from None

    def stop(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    bound = server.server_address
    logger.info("serving metrics of cluster %s on http://%s:%s/metrics", cluster, bound[0], bound[1])
    try:
        while thread.is_alive():
            thread.join(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
    return 0


# --- job records --------------------------------------------------------------------------------


def job_name(args: argparse.Namespace) -> str | None:
    """The job this run is, or None when it is not a job run."""
    if hasattr(args, "job_name"):
        return str(args.job_name) if args.job_name else None
    from pgvault.cli import SCHEDULED_JOBS, job_command

    command = job_command(args)
    if command not in SCHEDULED_JOBS:
        return None
    if command == "drill" and getattr(args, "what", None) == "list":  # reading the history is not a drill
        return None
    return str(command)


def record_job(args: argparse.Namespace, *, started: float, exit_code: int, error: BaseException | None) -> None:
    """Record a scheduled command's outcome in ``<cluster>/jobs/<job>.json`` and, when
    ``--metrics-textfile`` / ``metrics.textfile`` (``$PGVAULT_METRICS_TEXTFILE``) is set, in that textfile.

    Then, when webhooks are configured, the outcome is notified (cli/notify.py :func:`notify_job`).

    Best effort: it never raises, so the command's exit status and error stay what they were.  A
    repository that cannot be written is the usual reason a job failed; the textfile is the way
    that failure still reaches Prometheus, and the notification the way it reaches people."""
    try:
        recorded = _record(args, started, exit_code, error)
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - recording must never change the outcome
        log.get().warning("could not record the job's outcome: %s: %s", type(e).__name__, log.redact(str(e)))
        return
    if recorded is None:
        return
    try:
        from pgvault.cli.notify import notify_job

        notify_job(*recorded)
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - nor must notifying
        log.get().warning("could not notify the job's outcome: %s: %s", type(e).__name__, log.redact(str(e)))


def _record(args: argparse.Namespace, started: float, exit_code: int,
            error: BaseException | None) -> tuple[Settings | None, str, JobRun, JobRecord | None] | None:
    """Record the run; returns what notifying it needs: the settings (None when they did not load),
    the cluster, the run and the job's record before it (None: first run, or not readable)."""
    import pgvault
    from pgvault.cli import settings_from
    from pgvault.repository.jobs import JobRun, update_job

    job = job_name(args)
    if job is None:
        return None
    details = getattr(args, "job_details", None)
    run = JobRun(
        job=job, started_at=dt.datetime.fromtimestamp(started, dt.UTC),
        finished_at=dt.datetime.now(dt.UTC), exit_code=exit_code,
        error_kind=_error_kind(error, exit_code),
        error=None if error is None else log.redact(getattr(error, "message", None) or f"{type(error).__name__}: {error}"),
        details=dict(details) if isinstance(details, dict) else {},
        host=hostname(), pgvault_version=pgvault.__version__,
    )
    logger = log.get()
    settings = None
    try:
        settings = settings_from(args)
    except PgvaultError:
        pass  # the command reported it; the textfile can still show the failure
    if settings is not None:
        cluster, textfile, gateway = settings.cluster, settings.metrics_textfile, settings.metrics_pushgateway
    else:  # the configuration did not load: the environment's own values, read through the settings table
        from pgvault.config import environment_value

        cluster = getattr(args, "cluster", None) or environment_value("cluster")
        textfile = environment_value("metrics.textfile")
        gateway = environment_value("metrics.pushgateway")
    record: JobRecord | None = None
    previous: JobRecord | None = None
    if settings is not None:
        try:
            from pgvault.storage import open_storage, s3_settings

            url = settings.repository_url
            storage = open_storage(url, s3=s3_settings(settings) if url.startswith("s3://") else None)
            previous, record = update_job(storage, cluster, run)
        except Exception as e:  # noqa: BLE001 - e.g. the repository is down: the textfile still gets it
            logger.warning("could not record the %s job in the repository: %s", job, log.redact(str(e)))
    path = getattr(args, "metrics_textfile", None) or textfile
    if path:
        from pgvault.operations.maintenance.metrics import write_job_textfile

        try:
            local = write_job_textfile(path, cluster, run, record)
        except Exception as e:  # noqa: BLE001
            logger.warning("could not write the job's metrics to %s: %s", path, log.redact(str(e)))
        else:
            from pgvault.policy.notify import previous_outcome

            previous = previous_outcome(previous, local)
    if gateway:
        try:
            push_after_job(gateway, settings, cluster, run, record)
        except Exception as e:  # noqa: BLE001
            logger.warning("could not push the job's metrics to %s: %s", log.redact(gateway), log.redact(str(e)))
    return settings, cluster, run, previous


def push_after_job(url: str, settings: Settings | None, cluster: str, run: JobRun, record: JobRecord | None) -> None:
    """``metrics.pushgateway``: after a scheduled job, push the cluster's status (what ``metrics
    --push --no-connect`` pushes), so a CronJob needs no second command; this run's series come
    from ``record`` (the repository's merged record) or, when the repository could not take it,
    from the run alone.  A repository that cannot be read still pushes ``pgvault_up 0`` and the
    job's failure."""
    from pgvault.operations.maintenance import metrics
    from pgvault.repository.jobs import merge_run

    samples = None
    if settings is not None:
        try:
            from pgvault.operations.context import build_context
            from pgvault.operations.maintenance.status import gather_status
            from pgvault.policy.verdict import evaluate

            snap = gather_status(build_context(settings), connect=False)
            samples = metrics.snapshot_samples(snap, evaluate(snap))
        except PgvaultError as e:
            log.get().warning("metrics: cannot read the repository: %s", log.redact(e.message))
    if samples is None:
        samples = metrics.down_samples(cluster)
    mine = record if record is not None else merge_run(cluster, None, run)
    samples = [s for s in samples if s.label("pgvault_job") != run.job] + metrics.job_samples(cluster, mine)
    metrics.push(url, samples, cluster)


def _error_kind(error: BaseException | None, exit_code: int) -> str | None:
    if isinstance(error, PgvaultError):
        return error.kind
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    if error is not None:
        return "internal"
    if exit_code == 0:
        return None
    # A command that printed its own report and returned a documented exit code (verify: 6).
    from pgvault import errors

    for cls in (errors.UsageError, errors.DatabaseError, errors.StorageError, errors.NotFoundError,
                errors.IntegrityError, errors.LockedError, errors.TargetBusyError, errors.VerificationError,
                errors.ToolError, errors.TargetExistsError, errors.RecoveryError):
        if cls.exit_code == exit_code:
            return cls.kind
    return "error"
