"""One section per alert of deploy/prometheus/alerts.yaml: what it means and what to do.

The text lives in the package because ``pgvault runbook`` runs from an installed package, where
``deploy/`` is not; tests/unit/test_runbook.py keeps the names and severities in step with the
rules file.  Each heading is exactly ``### Alert: <name>`` so that GitHub's anchor is
``#alert-<name in lower case>``, the link the rules' annotations can carry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pgvault.runbook.document import Block, Heading, Para, code, items
from pgvault.runbook.facts import EXAMPLE, Facts, duration, pgvault
from pgvault.runbook.procedures import lines


@dataclass(frozen=True)
class Alert:
    name: str
    severity: str
    meaning: Callable[[Facts], str]
    steps: Callable[[Facts], tuple[str, ...]]
    commands: Callable[[Facts], tuple[str | tuple[str, str], ...]]


def _backup_now(f: Facts) -> tuple[tuple[str, str], ...]:
    return ((pgvault("status"), "the newest backups, the last run of every scheduled job and its error"),
            (pgvault("list"), "what the repository holds"),
            (pgvault("backup", "--all"), "a logical backup now"),
            (pgvault("basebackup"), "a base backup now (on the database host, as its OS user)"),
            (pgvault("show", "latest"), "afterwards: the new backup is there"))


def _archiving(f: Facts) -> tuple[tuple[str, str], ...]:
    return ((pgvault("status"), "the archiver: last archived and last failed WAL file, backlog, lag"),
            (pgvault("config", "check"), "as the database's OS user: can it read the configuration?"),
            (pgvault("status", "--no-connect"), "can the repository be read at all?"))


_ARCHIVE_STEPS = (
    "Read the server log for `pgvault wal push` errors; their exit code says why: 4 the repository "
    "(network, credentials, disk full, an S3 endpoint not answering), 6 different content already archived "
    "under that name (another server archiving as this cluster?), 2 configuration.",
    "Watch the disk of `pg_wal`: PostgreSQL keeps every WAL file until it is archived, a full disk stops the server.",
    "Everything not archived is lost if the server is lost now: the recovery point objective is slipping.",
)

ALERTS: tuple[Alert, ...] = (
    Alert("PgvaultBackupMissing", "critical",
          lambda f: "The newest backup of a kind (logical per database, or physical) finished more than 48 hours ago "
                    f"(`monitoring.backup_max_age` is {duration(f.backup_max_age)}: `pgvault status` is CRITICAL too).",
          lambda f: ("Find why the scheduled backup did not succeed: `pgvault status` shows each job's last run, exit "
                     "code and error; the scheduler's (CronJob, systemd timer) logs say whether it ran at all.",
                     "Exit 7: another backup holds the lock (a hung run? it is taken over once stale); 3: PostgreSQL "
                     "unreachable; 4: the repository.",
                     "Run the backup by hand once the cause is fixed, and check it appears."),
          _backup_now),
    Alert("BackupFailed", "critical",
          lambda f: "No backup job has succeeded for 48 hours: the scheduled `pgvault backup` / `pgvault basebackup` "
                    "runs fail (or do not run), so the newest backup only gets older.",
          lambda f: ("`pgvault status` lists the last run of every scheduled job with its exit code and error "
                     "(also the `pgvault_job_*` series when the repository itself is down).",
                     "Fix the cause (see the exit codes under [Before you start](#before-you-start)), run the job by "
                     "hand, then check the schedule runs it again."),
          _backup_now),
    Alert("PgvaultNoBackup", "critical",
          lambda f: f"The repository holds no complete backup of cluster `{f.cluster}` at all.",
          lambda f: ("A new cluster: take the first backups now.",
                     "The monitoring looks at the wrong place: `pgvault config check` shows the cluster and "
                     "repository it uses.",
                     "Backups existed before: treat it as an incident (deleted bucket or prefix, a lifecycle rule, "
                     "an attacker); do not run `pgvault expire --apply`; see [Loss of a region](#loss-of-a-region)."),
          lambda f: ((pgvault("config", "check"), "which cluster and repository?"), *_backup_now(f))),
    Alert("PgvaultBackupSlow", "warning",
          lambda f: "The newest backup took more than an hour. A slow backup is a long window for failure and "
                    "usually means a slow restore too.",
          lambda f: ("Compare with earlier backups (`pgvault list`): growth, or the network and the store?",
                     "For very large databases, `backup.exact_row_counts: false` (`--no-exact-counts`) skips the "
                     "counting; base backups write `backup.parallel` streams.",
                     "Measure what it means for a restore: run a drill."),
          lambda f: ((pgvault("list"), "durations and sizes of earlier backups"),
                     (pgvault("show", "latest"), "the newest backup"),
                     (pgvault("drill"), "how long a restore of it takes"))),
    Alert("PgvaultWalArchivingFailing", "warning",
          lambda f: "PostgreSQL's `archive_command` (`pgvault wal push`) has been failing for 15 minutes "
                    "(`pg_stat_archiver`: the last failure is newer than the last success).",
          lambda f: _ARCHIVE_STEPS, _archiving),
    Alert("PgvaultWalArchivingStalled", "warning",
          lambda f: "The oldest WAL file waiting to be archived has waited more than 15 minutes.",
          lambda f: _ARCHIVE_STEPS, _archiving),
    Alert("PgvaultWalArchivingStalledCritical", "critical",
          lambda f: "No WAL has been archived for over an hour: losing the server now loses more than an hour of "
                    "committed transactions.",
          lambda f: (*_ARCHIVE_STEPS, "Once archiving works again, take a base backup: `pgvault basebackup`."),
          _archiving),
    Alert("PgvaultWalBacklogGrowing", "warning",
          lambda f: "More than 16 WAL files wait to be archived and the backlog has grown for 30 minutes: archiving "
                    "does not keep up with the write rate.",
          lambda f: (f"This configuration uploads {f.archive_parallel} files at a time "
                     f"(`archive.parallel`){'' if f.archive_async else ' but `archive.async` is off: turn it on'}; "
                     "raise it if the store and network allow.",
                     "Check the store's latency and errors (throttling: HTTP 503)."),
          _archiving),
    Alert("PgvaultWalArchiveGap", "critical",
          lambda f: "A WAL file is missing in the archive. Recovery cannot pass a hole: no point in time after it can "
                    "be restored from the base backups before it.",
          lambda f: ("List the holes: `pgvault verify --all`.",
                     "Take a base backup now: points after it are restorable again. The points between the hole and "
                     "the new base backup stay unreachable by point-in-time recovery (logical backups still restore).",
                     "Find out how a confirmed file went missing (a lifecycle rule on the `wal/` prefix? a deletion?)."),
          lambda f: ((pgvault("verify", "--all"), "the holes, as first..last ranges"),
                     (pgvault("basebackup"), "on the database host, as its OS user"),
                     (pgvault("status"), "the recoverable window afterwards"))),
    Alert("PgvaultCorruptPages", "critical",
          lambda f: "The newest base backup found pages of the cluster whose checksum fails (data checksums): the data "
                    "files are damaged below PostgreSQL (disk, controller, memory, a stray write). The backup itself is "
                    "complete and holds the pages as they are now, damage included.",
          lambda f: ("`pgvault status` and `pgvault list --json` name the pages: file, relation, database, block.",
                     "Do not expire the older base backups: the newest one from before the damage is the one to restore "
                     "the damaged relations (or the cluster) from. Follow [Corruption](#corruption).",
                     "`backup.page_checksums: warn` makes the command succeed while the damage is repaired; the metric "
                     "and this alert stay until a base backup reads no bad page."),
          lambda f: ((pgvault("status"), "the first bad page, by relation and block"),
                     (pgvault("list", "--json"), "every bad page of each base backup (page_checksums)"),
                     ("pg_amcheck --all --install-missing --heapallindexed", "the extent, on the live cluster"))),
    Alert("PgvaultRecoverableWindowShort", "warning",
          lambda f: "Point-in-time recovery reaches back less far than `retention.pitr_window` "
                    f"({duration(f.pitr_window)}).",
          lambda f: ("Usual causes: base backups failing or not scheduled, a WAL gap, a cluster younger than the window.",
                     "`pgvault expire` (without `--apply`) shows which base backups and WAL the policy keeps."),
          lambda f: ((pgvault("status"), "the window, the base backups, any gap"),
                     (pgvault("expire"), "the retention plan"),
                     (pgvault("basebackup"), "on the database host, as its OS user"))),
    Alert("PgvaultNoRecentDrill", "warning",
          lambda f: f"No restore drill has passed in {duration(f.drill_max_age)}: nobody has proven lately that the "
                    "backups restore.",
          lambda f: ("Run a drill of each kind now, and check the schedule (monthly at least).",),
          lambda f: ((pgvault("drill"), "the newest logical backup into a throwaway server"),
                     (pgvault("drill", "--kind", "physical"), "the newest base backup plus WAL"),
                     (pgvault("drill", "list"), "the history"))),
    Alert("PgvaultDrillFailed", "warning",
          lambda f: "The last restore drill of a kind failed: a restore did not work, or a check after it failed "
                    "(row counts, database properties, invalid indexes, a smoke query).",
          lambda f: ("`pgvault drill list` names the failed checks. A failed smoke query may be a stale query; a "
                     "failed restore or row count is a broken backup until proven otherwise.",
                     "Verify the backup, then drill it again; if it stays broken, take a new backup and drill that."),
          lambda f: ((pgvault("drill", "list"), "which check failed"),
                     (pgvault("verify", "latest"), "are the stored objects intact?"),
                     (pgvault("drill"), "again"),
                     (pgvault("drill", EXAMPLE.backup_id), "an older backup (replace the id)"))),
    Alert("PgvaultDrillOverRTO", "warning",
          lambda f: f"A drill's restore took longer than the recovery-time objective `drill.rto` "
                    f"({duration(f.drill_rto)}): a real restore would too.",
          lambda f: ("`pgvault drill list` shows the measured restore times: a trend (growth) or one slow run?",
                     "Faster restores: `--jobs N` for logical restores, `backup.parallel` for base backups, restore "
                     "hardware closer to the repository; or agree on a new objective."),
          lambda f: ((pgvault("drill", "list"), "restore times"),
                     (pgvault("drill", "--kind", "physical"), "measure the point-in-time path too"))),
    Alert("PgvaultVerifyFailed", "critical",
          lambda f: "`pgvault verify` found stored backups or WAL that are damaged or missing, or could not run.",
          lambda f: ("`pgvault verify --all` lists every bad object. Do not delete anything yet; see "
                     "[Corruption](#corruption).",
                     "Pause scheduled `pgvault expire --apply`: it must not age out the good older backups.",
                     "Take new backups now and drill them."),
          lambda f: ((pgvault("verify", "--all"), "every damaged or missing object"),
                     (pgvault("status"), "what is still restorable"),
                     (pgvault("backup", "--all"), "new backups"),
                     (pgvault("basebackup"), "on the database host"),
                     (pgvault("drill"), "prove them"))),
    Alert("PgvaultJobFailed", "warning",
          lambda f: "The last run of a scheduled job (backup, basebackup, expire, drill, restore-point, repo-sync) failed.",
          lambda f: ("`pgvault status` shows the job's exit code and error message; the exit codes are listed under "
                     "[Before you start](#before-you-start).",
                     "Fix the cause and run the job by hand; the alert clears when a run succeeds."),
          lambda f: ((pgvault("status"), "the job's last run"),
                     (pgvault("status", "--json"), "the same, complete"))),
    Alert("PgvaultRepositoryUnreadable", "critical",
          lambda f: f"`pgvault metrics` cannot read the repository `{f.repository}`: backups can be neither judged "
                    "nor restored, and usually neither written.",
          lambda f: (("Check the credentials (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` or the instance role), the "
                      f"endpoint {('`' + f.s3_endpoint + '`') if f.s3_endpoint else '(AWS)'} and the bucket."
                      if f.s3 else "Check the directory: mounted, readable by the user the command runs as."),
                     "If the store is gone, see [Loss of a region](#loss-of-a-region)."),
          lambda f: ((pgvault("status", "--no-connect"), "the repository alone, with the error"),
                     (pgvault("config", "check"), "the settings in use"),
                     (pgvault("list"), "can it be listed?"))),
    Alert("PgvaultSecondRepositoryBehind", "warning",
          lambda f: "A second repository (another region's copy, kept by `pgvault repo sync`) lacks WAL archived "
                    "more than 30 minutes ago, or the newest backup: a restore from that region would lose that much.",
          lambda f: ("`pgvault status` lists every configured repository, its lag and its last sync run (with the "
                     "error of a failed one).",
                     "Run the sync by hand; an integrity error (exit 6) means the target holds an object that differs "
                     "from the source's: find out who wrote it before anything else; nothing was overwritten."),
          lambda f: ((pgvault("status"), "the repositories table: lag and last sync"),
                     (pgvault("repo", "sync"), "copy what is missing now"),
                     (pgvault("--repository", "NAME", "verify", "--all"), "check the copy (replace NAME)"))),
    Alert("PgvaultSecondRepositoryUnreachable", "warning",
          lambda f: "A configured second repository cannot be read: the copy can be neither checked nor used.",
          lambda f: ("Check that repository's endpoint, bucket and credentials (its `repositories.NAME.s3.*` "
                     "settings, the AWS profile it uses).",),
          lambda f: ((pgvault("status"), "the repositories table, with the error"),
                     (pgvault("config", "check"), "the settings in use"))),
)


def alert_sections(f: Facts) -> list[Block]:
    blocks: list[Block] = [
        Heading(2, "Alerts"),
        Para("One section per alert of `deploy/prometheus/alerts.yaml` (each rule's annotations can link to its "
             "section: this page's address plus `#alert-` and the alert's name in lower case)."),
    ]
    for a in ALERTS:
        blocks += [Heading(3, f"Alert: {a.name}"), Para(f"**Severity: {a.severity}.** {a.meaning(f)}"),
                   items(*a.steps(f)), code(*lines(*a.commands(f)))]
    return blocks
