#!/usr/bin/env python3
"""Benchmark: S3 throughput (issue 12, "S3 throughput") against SeaweedFS on 127.0.0.1.

Not a test: a report. One interleaved run, each round in the same order:

* storage level, one ``--size-mb`` object of incompressible bytes: upload with pgvault's
  ``S3Storage.open_write`` (multipart, ``max_concurrency`` parts in flight) and with boto3's
  TransferManager (``upload_fileobj``, the same number of connections); download with pgvault's
  ``open_read`` (ranged parallel GETs, ``read_concurrency`` parts in flight), with pgvault as it
  was (one GET stream: ``read_concurrency 1``) and with the TransferManager (``download_fileobj``);
* CLI level (needs PostgreSQL; skipped with ``--no-cli``): ``pgvault backup -d db`` (zstd + age)
  and ``pgvault restore latest --jobs 2`` into a new database, to SeaweedFS and to a local
  directory, plus the TransferManager downloading the stored backup object from SeaweedFS. The
  restore goal: ``restore from S3 <= restore from local disk + plain parallel download`` (a local
  restore is the decode and the load alone; the plain download is what S3 must add at most).
  The S3 restore also runs as before (``read_concurrency 1``: one GET stream).

Rounds alternate the order within each group (A B C, C B A, ...), so no step always runs first.
``--link-mb-s N`` puts a TCP proxy (tests/support/faultproxy.py) capping every connection at N MB/s
each way between the clients and SeaweedFS: what one connection gets from a remote store.

Each ratio is the median of the per-round ratios; MB/s are medians too. CPU seconds are this
process's (all threads) and the weed server's for storage steps.

    source scripts/env.sh
    python bench/s3.py                      # 500 MB object, 0.25 GiB database, 3 rounds
    python bench/s3.py --size-mb 500 --db-size-gb 0.25 --rounds 3 --json > s3.json
    python bench/s3.py --quick              # smoke mode (tests/e2e/test_bench_smoke.py)
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _procs  # noqa: E402,F401  (puts tests/ and src/ on sys.path)
import boto3  # noqa: E402
import botocore.config  # noqa: E402
from _procs import StepError, loadavg, log  # noqa: E402
from boto3.s3.transfer import TransferConfig  # noqa: E402

from pgvault.storage.s3 import S3Settings, S3Storage  # noqa: E402
from support.faultproxy import FaultProxy  # noqa: E402
from support.seaweed import SeaweedServer  # noqa: E402

MiB = 1 << 20
QUICK = {"size_mb": 24, "db_size_gb": 0.01, "rounds": 1}
_BLOCK = os.urandom(4 * MiB)  # repeated: incompressible for every compressor's window


class _Source(io.RawIOBase):
    """``size`` bytes of the random block, repeated, as a readable stream (for the TransferManager)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        n = min(len(view), self.left)
        for i in range(0, n, len(_BLOCK)):  # fill the whole buffer: a short read would shrink boto3's parts
            step = min(len(_BLOCK), n - i)
            view[i : i + step] = _BLOCK[:step]
        self.left -= n
        return n


class _Sink(io.RawIOBase):
    """Counts what is written (a non-seekable sink: the TransferManager writes parts in order)."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        n = len(memoryview(b))
        self.n += n
        return n


def _cpu_of(pid: int | None) -> float:
    """CPU seconds (user + system) of process ``pid`` so far."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass
class Bench:
    args: argparse.Namespace
    server: SeaweedServer
    base: Path
    rounds: list[dict[str, dict[str, Any]]] = dataclasses.field(default_factory=list)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        s = self.server
        self.bucket = s.create_bucket()
        self.proxy: FaultProxy | None = None
        self.endpoint = s.endpoint_url
        if self.args.link_mb_s:
            self.proxy = FaultProxy("127.0.0.1", s.s3_port)
            self.proxy.limit_rate(int(self.args.link_mb_s * 1e6))
            self.endpoint = self.proxy.endpoint_url
        self.settings = S3Settings(endpoint_url=self.endpoint, region=s.region, force_path_style=True,
                                   access_key_id=s.access_key, secret_access_key=s.secret_key,
                                   max_concurrency=self.args.connections, read_concurrency=self.args.connections)
        self.client = boto3.client("s3", endpoint_url=self.endpoint, region_name=s.region,
                                   aws_access_key_id=s.access_key, aws_secret_access_key=s.secret_key,
                                   config=botocore.config.Config(s3={"addressing_style": "path"},
                                                                 max_pool_connections=self.args.connections + 4))
        self.cli_env: dict[str, str] = {}

    # -- one timed step ---------------------------------------------------------------------------

    def timed(self, rnd: dict[str, dict[str, Any]], key: str, nbytes: int, fn: Callable[[], int]) -> None:
        os.sync()
        cpu0, weed0, t0 = time.process_time(), _cpu_of(self.server.pid), time.monotonic()
        moved = fn()
        wall = time.monotonic() - t0
        if moved != nbytes:
            raise StepError(f"{key}: moved {moved} bytes, expected {nbytes}")
        rnd[key] = {"wall_s": round(wall, 3), "mb_s": round(nbytes / 1e6 / wall, 2),
                    "cpu_s": round(time.process_time() - cpu0, 2), "weed_cpu_s": round(_cpu_of(self.server.pid) - weed0, 2)}
        log(f"  {key}: {wall:.2f} s, {nbytes / 1e6 / wall:.1f} MB/s")

    # -- storage level ------------------------------------------------------------------------------

    def storage(self, **changes: Any) -> S3Storage:
        return S3Storage(self.bucket, "bench", dataclasses.replace(self.settings, **changes))

    def up_pgvault(self, size: int) -> int:
        with self.storage().open_write("obj-pgvault") as w:
            left = size
            while left:
                n = min(left, len(_BLOCK))
                w.write(_BLOCK[:n])
                left -= n
        return size

    def transfer_config(self) -> TransferConfig:
        return TransferConfig(max_concurrency=self.args.connections, multipart_chunksize=self.settings.part_size,
                              multipart_threshold=self.settings.part_size)

    def up_boto3(self, size: int) -> int:
        self.client.upload_fileobj(_Source(size), self.bucket, "bench/obj-boto3", Config=self.transfer_config())
        return size

    def down_pgvault(self, key: str, **changes: Any) -> int:
        n = 0
        with self.storage(**changes).open_read(key) as f:
            while chunk := f.read(MiB):
                n += len(chunk)
        return n

    def down_boto3(self, full_key: str) -> int:
        sink = _Sink()
        cfg = TransferConfig(max_concurrency=self.args.connections, multipart_chunksize=self.settings.read_part_size,
                             multipart_threshold=self.settings.read_part_size)
        self.client.download_fileobj(self.bucket, full_key, sink, Config=cfg)
        return sink.n

    def storage_round(self, rnd: dict[str, dict[str, Any]], flip: bool) -> None:
        """Every step once; ``flip`` (odd rounds) reverses the order of each group, so that no
        tool always runs first after the previous round's heavy work (A B C, C B A, A B C ...)."""
        size = self.args.size_mb * MiB
        ups: list[tuple[str, Callable[[], int]]] = [
            ("up:pgvault", lambda: self.up_pgvault(size)), ("up:boto3", lambda: self.up_boto3(size))]
        downs: list[tuple[str, Callable[[], int]]] = [
            ("down:pgvault", lambda: self.down_pgvault("obj-pgvault")),
            ("down:pgvault-1stream", lambda: self.down_pgvault("obj-pgvault", read_concurrency=1)),
            ("down:boto3", lambda: self.down_boto3("bench/obj-pgvault")),
        ]
        for group in (ups, downs):
            for key, fn in reversed(group) if flip else group:
                self.timed(rnd, key, size, fn)

    # -- CLI level: pgvault backup / restore, S3 vs local -----------------------------------------

    def start_cli(self) -> None:
        import _common as cm
        import _datagen as datagen

        from support.cli import clean_env
        from support.pgcluster import PgCluster

        log(f"starting PostgreSQL {self.args.major}, generating >= {self.args.db_size_gb} GiB")
        self.cluster = PgCluster.create(self.args.major, self.base / "pg", settings=datagen.SERVER_SETTINGS)
        gen = datagen.generate(self.cluster, self.args.db_size_gb)
        self.info["db_size_bytes"] = gen["db_size_bytes"]
        self.db = datagen.DB
        key = cm.make_age_key(self.base)
        s = self.server
        common = {**self.cluster.env(), "PGVAULT_CLUSTER": "bench",
                  "PGVAULT_ENCRYPTION_AGE_RECIPIENTS": key.recipient,
                  "PGVAULT_ENCRYPTION_AGE_IDENTITY_FILE": str(key.identity_file)}
        self.cli_env = {
            "s3": clean_env(**common, PGVAULT_REPOSITORY_URL=f"s3://{self.bucket}/cli",
                            PGVAULT_REPOSITORY_S3_ENDPOINT_URL=self.endpoint, PGVAULT_REPOSITORY_S3_FORCE_PATH_STYLE="true",
                            AWS_ACCESS_KEY_ID=s.access_key, AWS_SECRET_ACCESS_KEY=s.secret_key, AWS_DEFAULT_REGION=s.region),
            "local": clean_env(**common, PGVAULT_REPOSITORY_URL=str(self.base / "repo")),
        }

    def pgvault(self, where: str, *args: str, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
        r = subprocess.run([sys.executable, "-m", "pgvault", *args, "--json"], env={**self.cli_env[where], **(extra_env or {})},
                           capture_output=True, text=True, timeout=3600, check=False)
        if r.returncode != 0:
            raise StepError(f"pgvault {args[0]} ({where}) exited {r.returncode}: {r.stderr.strip()[-800:]}")
        return json.loads(r.stdout)

    def cli_round(self, rnd: dict[str, dict[str, Any]], flip: bool) -> None:
        order = ("s3", "local") if flip else ("local", "s3")
        for where in order:
            self.cluster.psql("CHECKPOINT")
            os.sync()
            t0 = time.monotonic()
            doc = self.pgvault(where, "backup", "-d", self.db)["backup"]
            wall = time.monotonic() - t0
            obj = next(d for d in doc["databases"] if d["name"] == self.db)["object"]
            rnd[f"backup:{where}"] = {"wall_s": round(wall, 3), "stored_bytes": obj["stored_size"],
                                      "mb_s_stored": round(obj["stored_size"] / 1e6 / wall, 1), "object": obj.get("key")}
            log(f"  backup:{where}: {wall:.2f} s")
        restores = ("local", "s3", "s3-1stream")
        for step in reversed(restores) if flip else restores:
            where = step.split("-")[0]
            extra = {"PGVAULT_REPOSITORY_S3_READ_CONCURRENCY": "1"} if step == "s3-1stream" else {}
            target = f"bench_restore_{where}"
            self.cluster.drop_database(target)
            self.cluster.psql("CHECKPOINT")
            os.sync()
            t0 = time.monotonic()
            doc = self.pgvault(where, "restore", "latest", "-d", self.db, "-t", target, "--jobs", "2",
                               extra_env=extra)["restore"]
            wall = time.monotonic() - t0
            if not doc["verified"]:
                raise StepError(f"restore from {step} did not verify")
            rnd[f"restore:{step}"] = {"wall_s": round(wall, 3)}
            log(f"  restore:{step}: {wall:.2f} s")
            self.cluster.drop_database(target)
        obj = self.s3_backup_object(rnd["backup:s3"]["object"])
        self.timed(rnd, "restore-download:boto3", obj[1], lambda: self.down_boto3(obj[0]))

    def s3_backup_object(self, name: str) -> tuple[str, int]:
        """The newest S3 object named ``name`` (the database's dump of the last backup): full key, size."""
        found = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix="cli/"):
            found += [(o["LastModified"], o["Size"], o["Key"]) for o in page.get("Contents", [])
                      if o["Key"].endswith("/" + name)]
        if not found:
            raise StepError(f"no object named {name} in the S3 repository")
        _, size, key = max(found)
        return key, size

    # -- the run and its report --------------------------------------------------------------------

    def run(self) -> None:
        if not self.args.no_cli:
            self.start_cli()
        for i in range(self.args.rounds):
            log(f"round {i + 1}/{self.args.rounds} (load average {loadavg()})")
            rnd: dict[str, dict[str, Any]] = {"_": {"loadavg": loadavg()}}
            self.storage_round(rnd, flip=i % 2 == 1)
            if not self.args.no_cli:
                self.cli_round(rnd, flip=i % 2 == 1)
            self.rounds.append(rnd)

    def ratios(self) -> list[dict[str, Any]]:
        def med(fn: Callable[[dict[str, dict[str, Any]]], float]) -> tuple[float, list[float]]:
            per = [round(fn(r), 3) for r in self.rounds]
            return round(statistics.median(per), 3), per

        rows = []
        specs: list[tuple[str, str, Callable[[dict[str, dict[str, Any]]], float], float | None, str]] = [
            ("upload: pgvault / boto3 TransferManager (MB/s)", "up",
             lambda r: r["up:pgvault"]["mb_s"] / r["up:boto3"]["mb_s"], 1.0, ">="),
            ("download: pgvault / boto3 TransferManager (MB/s)", "down",
             lambda r: r["down:pgvault"]["mb_s"] / r["down:boto3"]["mb_s"], 1.0, ">="),
            ("download: pgvault / pgvault one GET stream (MB/s)", "down-vs-1stream",
             lambda r: r["down:pgvault"]["mb_s"] / r["down:pgvault-1stream"]["mb_s"], None, ""),
        ]
        if not self.args.no_cli:
            specs += [
                ("backup: S3 / local (wall)", "backup", lambda r: r["backup:s3"]["wall_s"] / r["backup:local"]["wall_s"],
                 None, ""),
                ("restore: S3 / local (wall)", "restore",
                 lambda r: r["restore:s3"]["wall_s"] / r["restore:local"]["wall_s"], None, ""),
                ("restore: S3 / S3 with one GET stream (wall)", "restore-vs-1stream",
                 lambda r: r["restore:s3"]["wall_s"] / r["restore:s3-1stream"]["wall_s"], None, ""),
                ("restore: S3 / (local + plain parallel download)", "restore-goal",
                 lambda r: r["restore:s3"]["wall_s"] / (r["restore:local"]["wall_s"]
                                                        + r["restore-download:boto3"]["wall_s"]), 1.0, "<="),
            ]
        for title, key, fn, goal, op in specs:
            value, per = med(fn)
            row: dict[str, Any] = {"key": key, "title": title, "value": value, "per_round": per}
            if goal is not None:
                ok = value >= goal if op == ">=" else value <= goal
                row.update(goal=f"{op} {goal:g}", status="PASS" if ok else "MISS")
            rows.append(row)
        return rows


def render(doc: dict[str, Any]) -> str:
    out = [f"S3 throughput against SeaweedFS on 127.0.0.1: {doc['info']}", ""]
    for i, rnd in enumerate(doc["rounds"]):
        out.append(f"round {i + 1} (load average {rnd['_']['loadavg']})")
        for key, v in rnd.items():
            if key != "_":
                out.append(f"  {key:26} " + ", ".join(f"{k} {x}" for k, x in v.items()))
    out.append("")
    for key in ("up:pgvault", "up:boto3", "down:pgvault", "down:pgvault-1stream", "down:boto3"):
        vals = [r[key]["mb_s"] for r in doc["rounds"] if key in r]
        if vals:
            out.append(f"{key:26} median {statistics.median(vals):8.1f} MB/s  (rounds: {vals})")
    out.append("")
    for row in doc["rows"]:
        verdict = f"  goal {row['goal']}: {row['status']}" if "goal" in row else ""
        out.append(f"{row['title']:52} {row['value']:6.3f}{verdict}  (per round {row['per_round']})")
    if doc["errors"]:
        out += ["", *[f"ERROR: {e}" for e in doc["errors"]]]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--size-mb", type=int, default=500, help="object size for the storage steps (default 500)")
    p.add_argument("--db-size-gb", type=float, default=0.25, help="database size for backup/restore (default 0.25)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--connections", type=int, default=4, help="parts in flight, pgvault and boto3 alike (default 4)")
    p.add_argument("--major", type=int, default=15)
    p.add_argument("--no-cli", action="store_true", help="storage steps only (no PostgreSQL)")
    p.add_argument("--link-mb-s", type=float, default=0,
                   help="cap every S3 connection at this many MB/s each way (a TCP proxy), like a remote store")
    p.add_argument("--quick", action="store_true", help=f"smoke mode: {QUICK}")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--render", metavar="JSON", help="print the text report of a saved --json report, run nothing")
    a = p.parse_args(argv)
    if a.render:
        print(render(json.loads(Path(a.render).read_text())))
        return 0
    if a.quick:
        for k, v in QUICK.items():
            setattr(a, k, v)
    base = Path(tempfile.mkdtemp(prefix="pgvault-bench-s3-"))
    base.chmod(0o755)
    errors: list[str] = []
    server = SeaweedServer(base / "seaweed")
    bench: Bench | None = None
    try:
        server.start()
        bench = Bench(a, server, base)
        bench.info.update(size_mb=a.size_mb, db_size_gb=a.db_size_gb, rounds=a.rounds, connections=a.connections,
                          link_mb_s_per_connection=a.link_mb_s or "unlimited (loopback)",
                          quick=a.quick, cpus=os.cpu_count(), loadavg_start=loadavg())
        bench.run()
    except (StepError, RuntimeError, OSError) as e:
        errors.append(str(e))
    except KeyboardInterrupt:
        return 130
    finally:
        cluster = getattr(bench, "cluster", None)
        if cluster is not None:
            cluster.stop(mode="immediate")
        if bench is not None and bench.proxy is not None:
            bench.proxy.close()
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
    doc: dict[str, Any] = {"kind": "bench_s3", "info": bench.info if bench else {}, "errors": errors,
                           "rounds": bench.rounds if bench else [], "rows": []}
    if bench is not None and not errors:
        doc["info"]["loadavg_end"] = loadavg()
        doc["rows"] = bench.ratios()
    print(json.dumps(doc, indent=1) if a.json else render(doc))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
