"""The disaster scenarios: accidental DELETE (``recover-table``, no downtime), corruption, loss of
a region, with the commands that handle them."""

from __future__ import annotations

import shlex

from pgvault.runbook.document import Block, Heading, Para, code, items
from pgvault.runbook.facts import EXAMPLE, Facts, duration, pgvault
from pgvault.runbook.procedures import lines


def accidental_delete(f: Facts) -> list[Block]:
    db, t = f.database, EXAMPLE.time
    tables = [a for x in EXAMPLE.tables for a in ("--table", x)]
    target = ["--target-time", t]
    return [
        Heading(3, "Accidental DELETE, UPDATE or DROP TABLE"),
        Para(f"Someone ran `DELETE FROM organizations` in `{db}` at 10:00 UTC. In the sample schema every foreign key "
             "cascades, so the one statement emptied `organizations`, `projects`, `configs` and `config_history`. "
             "The application can keep running: `recover-table` puts the rows back into the live database without "
             "stopping the server, and keeps every row written since."),
        *_find_the_moment(f),
        Para(f"**A. The tables as they were just before the mistake, into the live database (no downtime).** Choose the "
             f"target: the one `wal find` printed (`--target-xid X --target-exclusive`, just before that transaction), or "
             f"a time before the mistake (`{t}`, replace it). Look at the plan first, then run it with every table "
             "the cascade reached:"),
        code(*lines(
            (pgvault("status"), "the recoverable window must include the target"),
            (pgvault("recover-table", "--database", db, *tables, "--mode", "missing-rows", *target, "--dry-run"),
             "backup, WAL, tables, what would change"),
            (pgvault("recover-table", "--database", db, *tables, "--mode", "missing-rows", *target),
             "puts back the rows whose key is missing"),
        )),
        items(
            "It recovers the base backup plus WAL up to the target into a private scratch directory (socket only, "
            "no archiving), checks that recovery stopped exactly at the target, dumps the tables and removes the "
            "scratch server, also on failure or Ctrl-C. Only then does it touch the live database: one transaction, "
            "parents before children, every count checked before the commit. It needs disk for the whole cluster "
            "under `$TMPDIR` and time for the base backup's unpack plus the WAL replay.",
            "`--mode missing-rows` inserts only the rows whose primary key is missing now; rows written since the "
            "mistake are never touched. The report gives per table the rows now, at the target, inserted, and the "
            "rows there now that were not at the target (left alone). The tables' triggers are not fired for the "
            "recovered rows (no second audit entry), and sequences are not moved back.",
            "Recover only `organizations` and the command names the tables the cascade reached "
            "(`ON DELETE CASCADE` foreign keys) and how many recovered rows have no children now: run it again "
            "with those tables.",
            f"Not sure yet? The default mode, `--mode new-table`, only creates "
            f"`organizations__recovered_<target>` beside the original, to compare: `pgvault recover-table "
            f"--database {db} --table public.organizations --target-time '{t}'`.",
            "`--mode replace` makes the tables' contents exactly the target's (rows written since are removed); it "
            "refuses while a table not being recovered still references a row that would go. A dropped table comes "
            "back with `--mode new-table --into <its old name>`.",
            f"A whole database as of the target, beside the live one: `pgvault recover-table --database {db} "
            f"--target-database {db}_before --target-time '{t}'`.",
        ),
        Para("**B. From the last logical backup: no WAL needed, loses what changed since the backup.** Restore the "
             "tables side by side and look, or put them back in the live database, all the tables the cascade "
             "touched together (stop the writer first):"),
        code(*lines(
            (pgvault("list"), "the newest backup taken before 10:00"),
            (pgvault("restore", EXAMPLE.backup_id, "--database", db, "--target-database", f"{db}_before", *tables),
             "side by side (replace the id)"),
            (pgvault("restore", EXAMPLE.backup_id, "--database", db, *tables, "--clean"), "into the live database"),
        )),
        items(
            "`--clean` replaces those tables' rows with the backup's: rows written to them after the backup are "
            "lost, other tables are not touched. Sessions on the live database refuse the restore (exit 8) unless "
            "`--force` ends them.",
            "Rewinding the live cluster itself (`restore-cluster` as the new primary) loses every change after the "
            "target in every database: only when the damage is everywhere.",
        ),
    ]


def _find_the_moment(f: Facts) -> list[Block]:
    db = f.database
    return [
        Para("**First, the moment of the mistake, from the WAL.** Instead of guessing the time, ask the archived WAL "
             "which committed transactions deleted the table's rows (from the newest base backup on; `--from` an "
             "earlier time starts at an older backup), each with its xid, commit time, row count and the target that "
             "stops recovery just before it, ready to paste into A:"),
        code(*lines(
            (pgvault("wal", "find", "--table", "public.organizations", "--database", db, "--from", EXAMPLE.time),
             "xid, commit time, rows, target"),
            (pgvault("recover-table", "--database", db, "--table", "public.organizations", "--target-xid", "48213",
                     "--target-exclusive", "--dry-run"), "the target it printed (replace the xid)"),
        )),
        items(
            "`--op delete,update,truncate,drop` chooses what to list (default: delete, truncate, drop). TRUNCATE and "
            "DROP TABLE take all rows and the WAL does not count them; for those it prints `--target-action "
            "promote` in the restore-cluster line, because a server paused just before them cannot read the table "
            "(their lock is replayed). The recover-table line it prints works as printed (recover-table promotes its "
            "scratch copy at the target itself); after a DROP it adds `--into <old name>`.",
            "It reads the WAL from a base backup whose manifest maps the tables to their files (base backups taken "
            "by this pgvault version): a table created after the newest backup is not found until the next one.",
        ),
    ]


def corruption(f: Facts) -> list[Block]:
    d = EXAMPLE.data_dir
    return [
        Heading(3, "Corruption"),
        Para("**In the database** (`ERROR: invalid page in block 1 of relation base/16384/16410`, `could not read "
             "block`, `WARNING: page verification failed, calculated checksum ... but expected ...` in the server log): "
             "do not run `pg_resetwal`, `VACUUM FULL` or `zero_damaged_pages`; confirm the extent, then rebuild the "
             "cluster from the archive on healthy storage. The base backup holds the pages as PostgreSQL wrote them "
             "and WAL replay re-applies every change since; damage made below PostgreSQL (disk, controller, a stray "
             "write) is not in the WAL, so the copy reaches the last archived transaction without it. Checksum "
             "errors need data checksums (`SHOW data_checksums`; `initdb --data-checksums`, on by default from "
             "PostgreSQL 18): without them only `pg_amcheck` finds the damage."),
        code(*lines(
            ("pg_amcheck --all --install-missing --heapallindexed",
             "which relations are damaged (--install-missing: CREATE EXTENSION amcheck where it is missing)"),
            ('pg_checksums --check -D "$PGDATA"', "or, with the server stopped: every bad block (the live data directory)"),
            (pgvault("status"), "archiving up to date? (what is not archived is lost)"),
            (pgvault("restore-cluster", "-D", d, "--dry-run"), "the base backup and WAL to the end of the archive"),
            (pgvault("restore-cluster", "-D", d, "--start", "--port", EXAMPLE.port), "on healthy storage; promotes at the end"),
            (f"pg_amcheck -p {EXAMPLE.port} --all --install-missing --heapallindexed", "the restored copy is clean"),
            (f"pg_ctl -D {d} stop", "if not: stop it and restore an older base backup (replace the id)"),
            pgvault("restore-cluster", "-D", d, "--backup", EXAMPLE.backup_id, "--force", "--start", "--port", EXAMPLE.port),
        )),
        Para("Check that the copy holds what was committed last: `--json` reports "
             "`recovery.last_transaction_time` (the last transaction replayed), and row counts or the newest rows of "
             "busy tables should match what the application last wrote. `pgvault verify` and the drills check the "
             "backups, not the live data files: they pass during this kind of damage, and prove the backups the "
             "rebuild uses."),
        Para("With data checksums, `pgvault basebackup` checks every page it reads: a damaged page is named by "
             "relation and block in its manifest, in `pgvault list`, in `pgvault status` (CRITICAL, `corrupt_pages`) and "
             "in `pgvault_base_backup_bad_pages`, and the command exits 6 once the backup is stored. That backup holds "
             "the damaged pages too (WAL replay repairs only the pages it rewrites): restore from a base backup taken "
             "before the damage (the newest one whose check found nothing), with more WAL to replay, and check the "
             "restored copy."),
        Para("Then move the application to the restored server (or restore into the real data directory the same "
             "way, with `--archive` so that it archives as the primary), and take a base backup at once. If only one "
             "database is damaged and losing the changes since the last logical backup is acceptable, restoring that "
             "database is faster (see [Restore a database](#restore-a-database))."),
        Para("**In the backups** (`pgvault verify` or a drill failed): keep everything as it is while you find out "
             "why (bit rot, an object overwritten, the wrong key):"),
        code(*lines(
            (pgvault("verify", "--all"), "every damaged or missing object, WAL holes"),
            (pgvault("verify", EXAMPLE.backup_id), "one backup (replace the id)"),
            (pgvault("backup", "--all"), "new backups now"),
            (pgvault("basebackup"), "on the database host"),
            (pgvault("drill"), "prove the new one restores"),
        )),
        items("Pause scheduled `pgvault expire --apply`: a damaged newest backup must not push the good older ones out.",
              "A wrong or missing age key looks like damage to decryption only: `pgvault config check` on the "
              "restoring host parses the key."),
    ]


def region_loss(f: Facts) -> list[Block]:
    d = EXAMPLE.data_dir
    env = [f"export {k}={shlex.quote(v)}" for k, v in f.environment()]
    creds = ["export AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...   # from the password vault"] if f.s3 else []
    store = (f"This repository is the bucket `{f.repository}`" + (f" at `{f.s3_endpoint}`" if f.s3_endpoint else "")
             + (f" in region `{f.s3_region}`" if f.s3_region else "") + ": it survives the database's region only "
             "if it is elsewhere or replicated to another region." if f.s3 else
             f"This repository is the local directory `{f.repository}`: it is lost with the host unless it lives "
             "on separate (replicated) storage.")
    copy = f.copies[0][0] if f.copies else "NAME"
    second: list[Block] = [
        Para(f"**The database and the primary repository are gone together** (one region). The copy in another "
             f"region, repository `{copy}` (`{f.copies[0][1]}`), is what `pgvault repo sync` kept complete: every "
             "finished backup and every archived WAL file up to its last run. Every reading command takes "
             f"`--repository {copy}`; the restored server's `restore_command` then fetches WAL from it too:"
             if f.copies else
             "**The database and the repository are gone together** (one region): only a copy in another region "
             "helps. Configure one under `repositories.NAME` (`url`, `s3.*`) and run `pgvault repo sync` on a "
             "schedule (the `pgvault-repo-sync` CronJob); then, in this scenario, every reading command takes "
             "`--repository NAME`:"),
        code(*env, *[f"export {k}={shlex.quote(v)}" for k, v in f.copies_env], *creds,
             *lines((pgvault("--repository", copy, "status", "--no-connect"),
                     "the copy's newest backups and WAL (the first repository shows as unreachable)"),
                    (pgvault("--repository", copy, "restore-cluster", "-D", d, "--dry-run"), "the plan"),
                    (pgvault("--repository", copy, "restore-cluster", "-D", d, "--start", "--target-action", "promote"),
                     "everything the copy holds, promoted"),
                    (pgvault("--repository", copy, "restore", "latest", "--database", f.database),
                     "or a logical restore from the copy"))),
        items("The data-loss window is the copy's lag: WAL archived in the lost region after the last successful "
              "sync is gone (`pgvault status` showed it as the copy's lag; the `PgvaultSecondRepositoryBehind` alert "
              "watches it). With the sync CronJob every 15 minutes it is about 15 minutes plus the archive lag.",
              "Then make the copy the primary: `repository.url` = the copy's URL (and its `s3.*`), a new base backup "
              "at once, and a new copy elsewhere when one can be had.",
              f"Replicas of the new primary come from the copy too: `pgvault --repository {copy} restore-cluster -D DIR "
              "--standby --primary-conninfo 'host=NEW-PRIMARY user=replicator' --start` (see "
              "[Seed a replica](#seed-a-replica-from-the-repository))."),
    ]
    return [
        Heading(3, "Loss of a region"),
        Para(store),
        *second,
        Para("**The database server is gone, the repository is not.** On a new host with PostgreSQL of the same "
             "major version (`pgvault show latest` names it), pgvault, the age key and the credentials; without the "
             "configuration file, the settings as environment variables:"),
        code(*env, *creds,
             *lines((pgvault("status", "--no-connect"), "the newest backups and the end of the archive"),
                    (pgvault("restore-cluster", "-D", d, "--dry-run"), "the plan to the end of the archive"),
                    (pgvault("restore-cluster", "-D", d, "--archive", "--start"),
                     "the new primary: recovers everything archived, promotes, archives"),
                    (pgvault("basebackup", "--pgdata", d), "at once: the first base backup of the new timeline"),
                    (pgvault("status"), "OK again?"),
                    (pgvault("restore-cluster", "-D", "/var/lib/postgresql/replica", "--standby", "--primary-conninfo",
                             "host=NEW-PRIMARY user=replicator", "--start"),
                     "on each replica host: a replica of the new primary, from the repository"))),
        items(
            "What was committed but not yet archived when the region went is lost: the WAL archive lag "
            "(`pgvault status`, the `PgvaultWalArchivingStalled` alert) is the data-loss window.",
            "No base backup or a WAL gap: restore the logical backups instead, onto a new cluster: "
            f"`pgvault restore latest --database {f.database} --globals`, one database at a time; what changed "
            "since that backup is lost.",
            "Point the application (DNS, connection strings) at the new server; fix `archive_command` and the "
            "schedules on the new host.",
        ),
        Para("**The repository's region is gone, the database is not.** Back up somewhere else at once, then restore "
             "the usual schedule there (point `repository.url` at the new place in the configuration; `archive_command` "
             "follows it):"),
        code(*lines(
            (pgvault("--repository", "s3://BUCKET-IN-ANOTHER-REGION/postgres", "backup", "--all"), "replace the bucket"),
            (pgvault("--repository", "s3://BUCKET-IN-ANOTHER-REGION/postgres", "basebackup"), "on the database host"),
        )),
        Para("Until the new base backup exists there is no point-in-time recovery: make it first. The new place "
             "starts empty: the point-in-time window builds up again from its first base backup"
             + (f" (`retention.pitr_window` asks for {duration(f.pitr_window)})." if f.pitr_window else ".")),
    ]


def scenarios(f: Facts) -> list[Block]:
    return [Heading(2, "Disaster scenarios"), *accidental_delete(f), *corruption(f), *region_loss(f)]
