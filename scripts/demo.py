"""The main job on the embedded default, start to finish (run through scripts/demo.sh).

Starts a throwaway PostgreSQL cluster with the Pagila and Chinook sample databases, backs every
database up into a local repository (zstd + age encryption), lists it, restores Pagila into a new
database and prints the row-count verification.  The repository stays in ./demo/ for inspection;
the cluster is stopped and removed at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.pgcluster import PgCluster, postgres_tmpdir  # noqa: E402
from support.pg_fixtures import pg_majors  # noqa: E402


def step(title: str) -> None:
    print(f"\n\033[1m==> {title}\033[0m" if sys.stdout.isatty() else f"\n==> {title}", flush=True)


def run(args: list[str], env: dict[str, str], *, check: bool = True) -> None:
    print("$ pgvault " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "pgvault", *args], env=env, check=check)


def main() -> int:
    demo = ROOT / "demo"
    if demo.exists():
        shutil.rmtree(demo)
    demo.mkdir()
    major = max(pg_majors() or [15])
    step(f"starting a throwaway PostgreSQL {major} cluster with sample data")
    cluster = PgCluster.create(major, postgres_tmpdir("pgvault-demo-") / "pg")
    try:
        cluster.create_database("pagila")
        cluster.load_pagila("pagila")
        cluster.load_chinook()
        print(f"PostgreSQL {major} on 127.0.0.1:{cluster.port} with databases pagila, chinook_auto_increment")

        step("making an age key pair (the backup host only ever needs the public key)")
        key = demo / "age-key.txt"
        subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
        recipient = next(ln.split(":", 1)[1].strip() for ln in key.read_text().splitlines() if "public key" in ln)
        print(f"public key {recipient}; private key in {key} (keep it OUT of the repository)")

        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "PGVAULT_")) or k == "PGVAULT_PG_BINDIRS"}
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
        step("restoring pagila into a new database and verifying it against the manifest")
        run(["restore", "latest", "--database", "pagila", "--target-database", "pagila_restored", "--jobs", "2"], env)
        step("restore drill: the newest backup into a throwaway server, checked and removed again")
        smoke = '[{"name": "films", "sql": "SELECT count(*) FROM film", "database": "pagila", "min": 1000}]'
        run(["drill"], {**env, "PGVAULT_DRILL_SMOKE_QUERIES": smoke})
        step("verifying every stored object (sizes, checksums, decryption, decompression)")
        run(["verify", "--all"], env)
        step("status for the on-call (exit 0 OK, 1 WARNING, 2 CRITICAL)")
        run(["status"], env, check=False)
        step("done")
        print(f"repository: {demo / 'repo'}  (objects: {sum(1 for p in (demo / 'repo').rglob('*') if p.is_file())})")
    finally:
        cluster.destroy()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
