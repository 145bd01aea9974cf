"""The main job on the embedded default, start to finish (run through scripts/demo.sh).

Starts a throwaway PostgreSQL cluster with pgvault's generated sample database ``app``
(``pgvault.sample``: organizations, projects, configs and their audit history; nothing outside the
repository is needed), backs every database up into a local repository (zstd + age encryption),
lists it, restores ``app`` into a new database and prints the row-count verification, drills the
backup, verifies every stored object and shows the status.  The repository stays in ./demo/ for
inspection; the cluster is stopped and removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from pgvault import sample  # noqa: E402
from pgvault.config import environment_value  # noqa: E402
from pgvault.pg.bindir import available_bindirs  # noqa: E402
from support.pgcluster import PgCluster, postgres_tmpdir  # noqa: E402


def step(title: str) -> None:
    print(f"\n\033[1m==> {title}\033[0m" if sys.stdout.isatty() else f"\n==> {title}", flush=True)


def run(args: list[str], env: dict[str, str], *, check: bool = True) -> None:
    print("$ pgvault " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "pgvault", *args], env=env, check=check)


def server_majors() -> list[int]:
    """PostgreSQL majors whose server programs are installed (not only the client)."""
    return sorted({b.major for b in available_bindirs(environment_value("postgres.bin_dirs")) if (b.path / "postgres").exists() and (b.path / "initdb").exists()})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/demo.sh", description="pgvault's demo: back up, restore, drill, "
                                     "verify and check a generated sample database on a throwaway server")
    parser.add_argument("--scale", type=int, default=sample.DEFAULT_SCALE,
                        help="size of the sample database, about 5,200 rows per unit (default 1)")
    args = parser.parse_args(argv)
    demo = ROOT / "demo"
    if demo.exists():
        shutil.rmtree(demo)
    demo.mkdir()
    major = max(server_majors() or [15])
    step(f"starting a throwaway PostgreSQL {major} cluster with the sample database")
    tmp = postgres_tmpdir("pgvault-demo-")
    cluster = PgCluster.create(major, tmp / "pg")
    try:
        db = cluster.load_sample(sample.DATABASE, scale=args.scale)
        counts = sample.Sample(args.scale).counts()
        print(f"PostgreSQL {major} on 127.0.0.1:{cluster.port}, database {db}: "
              + ", ".join(f"{t} {counts[t]}" for t in sample.TABLES) + " rows")

        step("making an age key pair (the backup host only ever needs the public key)")
        key = demo / "age-key.txt"
        subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
        recipient = next(ln.split(":", 1)[1].strip() for ln in key.read_text().splitlines() if "public key" in ln)
        print(f"public key {recipient}; private key in {key} (keep it OUT of the repository)")

        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "PGVAULT_")) or k in ("PGVAULT_POSTGRES_BIN_DIRS", "PGVAULT_PG_BINDIRS")}
        env.update(cluster.env())
        env.update(
            PGVAULT_REPOSITORY_URL=str(demo / "repo"),
            PGVAULT_CLUSTER="demo",
            PGVAULT_ENCRYPTION_AGE_RECIPIENTS=recipient,
            PGVAULT_ENCRYPTION_AGE_IDENTITY_FILE=str(key),
        )
        step("backing up every database plus globals")
        run(["backup", "--all"], env)
        step("listing the repository")
        run(["list"], env)
        step(f"restoring {db} into a new database and verifying it against the manifest")
        run(["restore", "latest", "--database", db, "--target-database", f"{db}_restored", "--jobs", "2"], env)
        step("restore drill: the newest backup into a throwaway server, checked and removed again")
        smoke = [{"name": "organizations", "sql": "SELECT count(*) FROM organizations", "database": db,
                  "expect": counts["organizations"]},
                 {"name": "audit trail", "sql": "SELECT count(*) FROM config_changes", "database": db,
                  "expect": counts["config_history"]}]
        run(["drill"], {**env, "PGVAULT_DRILL_SMOKE_QUERIES": json.dumps(smoke)})
        step("verifying every stored object (sizes, checksums, decryption, decompression)")
        run(["verify", "--all"], env)
        step("status for the on-call (exit 0 OK, 1 WARNING, 2 CRITICAL)")
        run(["status"], env, check=False)
        step("done")
        print(f"repository: {demo / 'repo'}  (objects: {sum(1 for p in (demo / 'repo').rglob('*') if p.is_file())})")
    finally:
        cluster.destroy()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
