"""Every CronJob of deploy/kubernetes, run as its manifest says, in pgvault's image with podman.

The PostgreSQL server is the StatefulSet's own container (the server image, archiving WAL with
pgvault into SeaweedFS through the environment the manifest gives it); each job's container gets
exactly its manifest's command, arguments, environment (ConfigMap and Secret references resolved
by tests/support/manifests.py from test values) and volumes, and runs as Kubernetes would run it:
its user, a read-only root file system with only its emptyDir volumes writable, no capabilities,
no privilege escalation.  Deviations, all forced by running without a cluster: the host network
(the server gets ``-c port=N`` so that it does not take 5432), the ConfigMap's config with this
machine's endpoints, and a wrapper around the command that reports the container's peak memory.

The peaks are printed (``-s``) and written to ``$PGVAULT_MEMORY_REPORT`` when set: the manifests'
memory requests and limits come from them.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from pgvault.policy.schedule import parse_day_rule, utc_day
from pgvault.sample import Sample
from support.image import podman_run
from support.manifests import (
    JobContainer,
    configmap_values,
    cronjobs,
    job_container,
    resources,
    statefulset_container,
)
from support.pgcluster import free_port
from support.pushgateway import BINARY as PUSHGATEWAY
from support.pushgateway import pushgateway, series

from ..e2e.conftest import make_age_key

pytestmark = pytest.mark.s3

# PGVAULT_KUBE_SCALE: the sample database's scale (1: ~5,000 rows; 150: ~780,000 rows, dumps past
# the 16 MiB multipart part size, which is what memory is measured with).
SCALE = int(os.environ.get("PGVAULT_KUBE_SCALE", "1"))
ORGANIZATIONS = Sample(SCALE).counts()["organizations"]
PASSWORD = "kube: pass'word"
MEMORY_MARK = "pgvault-test-memory"
# Runs the manifest's argv unchanged, then prints the container's peak memory: the cgroup's own
# peak (v2 memory.peak, v1 max_usage_in_bytes: includes page cache) and, sampled five times a
# second, the peak of anonymous + shared memory (what cannot be reclaimed; the OOM killer's view).
WRAPPER = r"""
cg=/sys/fs/cgroup
if [ -r $cg/memory.peak ]; then peak=$cg/memory.peak; stat=$cg/memory.stat; anon='^(anon|shmem) '
else peak=$cg/memory/memory.max_usage_in_bytes; stat=$cg/memory/memory.stat; anon='^total_(rss|shmem) '; fi
( max=0; while :; do
    now=$(grep -E "$anon" $stat | awk '{s += $2} END {print s + 0}')
    [ "$now" -gt "$max" ] && max=$now && echo "$max" > /tmp/.pgvault-test-anon
    sleep 0.2
  done ) &
sampler=$!
"$@"; rc=$?
kill $sampler 2>/dev/null
echo "MARK peak=$(cat $peak) anon=$(cat /tmp/.pgvault-test-anon 2>/dev/null || echo 0)" >&2
exit $rc
""".replace("MARK", MEMORY_MARK)


def _materialize(c: JobContainer, root: Path, *, claims: Mapping[str, Path]) -> tuple[list[str], list[str]]:
    """podman --volume and other options for ``c``'s mounts and security context."""
    uid = int(c.pod_security.get("runAsUser", 0))
    gid = int(c.pod_security.get("runAsGroup", uid))
    fs_group = c.pod_security.get("fsGroup")
    volumes: list[str] = []
    options = ["--user", f"{uid}:{gid}", "--cap-drop", "ALL"]
    if fs_group is not None:
        options += ["--group-add", str(fs_group)]
    if c.security.get("readOnlyRootFilesystem"):
        options += ["--read-only", "--read-only-tmpfs=false"]
    if c.security.get("allowPrivilegeEscalation") is False:
        options += ["--security-opt", "no-new-privileges"]
    for m in c.mounts:
        if m.kind in ("configMap", "secret"):
            d = root / f"{m.volume}-{uuid.uuid4().hex[:6]}"
            d.mkdir(mode=0o755)
            for name, content in m.files.items():
                f = d / name
                f.write_text(content)
                os.chown(f, 0, int(fs_group) if fs_group is not None else 0)  # the kubelet: root, group fsGroup
                f.chmod(m.mode if m.mode is not None else 0o644)
            volumes.append(f"{d}:{m.path}:ro")
        elif m.kind == "emptyDir" and m.path == "/dev/shm":
            options += ["--shm-size", "256m"]
        elif m.kind == "emptyDir":
            # A directory on disk, like the kubelet's (a tmpfs would count against the memory measured).
            d = root / f"{m.volume}-{uuid.uuid4().hex[:6]}"
            d.mkdir()
            os.chown(d, uid, int(fs_group) if fs_group is not None else gid)
            d.chmod(0o2770 if fs_group is not None else 0o700)
            volumes.append(f"{d}:{m.path}")
        elif m.kind == "persistentVolumeClaim":
            assert m.claim is not None
            volumes.append(f"{claims[m.claim]}:{m.path}" + (":ro" if m.read_only else ""))
        else:
            raise AssertionError(f"unexpected volume kind {m.kind}")
    return volumes, options


def _memory(stderr: str) -> dict[str, int]:
    line = next(ln for ln in reversed(stderr.splitlines()) if ln.startswith(MEMORY_MARK))
    return {k: int(v) for k, v in (item.split("=") for item in line.split()[1:])}


class Deployment:
    """The manifests with this machine's endpoints, and what it takes to run their containers."""

    def __init__(self, root: Path, *, seaweed: Any, bucket: str, port: int, gateway: str | None) -> None:
        self.root = root
        key = make_age_key(root)
        doc = yaml.safe_load(configmap_values()["pgvault-config"]["pgvault.yaml"])
        doc["repository"]["url"] = f"s3://{bucket}/kube"
        doc["repository"]["s3"] = {"endpoint_url": seaweed.endpoint_url, "region": seaweed.region, "force_path_style": True}
        doc["postgres"]["dsn"] = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
        doc["encryption"]["age_recipients"] = [key.recipient]
        doc["drill"]["smoke_queries"] = [{"name": "organizations", "sql": "SELECT count(*) FROM organizations",
                                         "database": "app", "min": ORGANIZATIONS}]
        if gateway:
            doc["metrics"]["pushgateway"] = gateway
        else:
            del doc["metrics"]
        self.config = yaml.safe_dump(doc, sort_keys=False)
        self.configmaps = {"pgvault-config": {"pgvault.yaml": self.config}}
        self.secrets = {"pgvault-postgres": {"PGPASSWORD": PASSWORD},
                        "pgvault-s3": {"AWS_ACCESS_KEY_ID": seaweed.access_key, "AWS_SECRET_ACCESS_KEY": seaweed.secret_key},
                        "pgvault-age-identity": {"identity.txt": key.identity_file.read_text()}}
        self.port = port
        self.data = root / "data-postgres-0"
        self.data.mkdir()
        self.memory: dict[str, dict[str, int]] = {}

    def job(self, name: str, image: str, *, extra_args: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
        c = job_container(cronjobs()[name], configmaps=self.configmaps, secrets=self.secrets)
        volumes, options = _materialize(c, self.root, claims={"data-postgres-0": self.data})
        argv = [*c.argv, *extra_args]
        proc = podman_run(image, ["-c", WRAPPER, "sh", *argv], entrypoint="sh", env=c.env, volumes=volumes,
                          options=options, timeout=900)
        self.memory[name + (" " + " ".join(extra_args) if extra_args else "")] = _memory(proc.stderr)
        return proc

    def start_server(self, image: str) -> str:
        [sts] = [d for d in resources() if d["kind"] == "StatefulSet"]
        c = statefulset_container(sts, configmaps=self.configmaps, secrets=self.secrets)
        os.chown(self.data, int(c.pod_security["runAsUser"]), int(c.pod_security["fsGroup"]))
        volumes, options = _materialize(c, self.root, claims={"data-postgres-0": self.data})
        started = podman_run(image, [*c.argv, "-c", f"port={self.port}"], env=c.env, volumes=volumes,
                             options=[*options, "--detach"], timeout=120)
        assert started.returncode == 0, started.stderr
        return started.stdout.strip()

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[Any]:
        return psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", password=PASSWORD, dbname=dbname,
                               autocommit=True, connect_timeout=5)


def _ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"{shlex.join(map(str, proc.args))} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[str | None]:
    if PUSHGATEWAY is None:
        yield None
        return
    with pushgateway(tmp_path) as url:
        yield url


def test_every_cronjob_runs_as_its_manifest_says(tool_image: str, server_image: str, seaweed, s3_bucket,  # type: ignore[no-untyped-def]
                                                 gateway: str | None, tmp_path: Path) -> None:
    root = tmp_path / "kube"
    root.mkdir()
    root.chmod(0o755)
    tmp_path.chmod(0o755)
    d = Deployment(root, seaweed=seaweed, bucket=s3_bucket, port=free_port(), gateway=gateway)
    server = d.start_server(server_image)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with d.connect() as conn:
                    conn.execute("CREATE DATABASE app")
                break
            except psycopg.OperationalError:
                logs = subprocess.run(["podman", "logs", server], capture_output=True, text=True).stderr
                assert time.monotonic() < deadline, logs
                time.sleep(0.5)
        with d.connect("app") as conn:
            Sample(SCALE).load(conn)

        backup = _ok(d.job("pgvault-backup", tool_image))
        assert "complete: 2 database(s)" in backup.stdout, backup.stdout  # app and postgres (+ the globals)

        # The base backup reads the server's data directory, mounted read-only, and waits until
        # the server's archive_command (pgvault, configured by the StatefulSet's env) has archived
        # the WAL it needs: this proves the credentials reach the archiver.
        basebackup = _ok(d.job("pgvault-basebackup", tool_image))
        assert "base backup" in basebackup.stdout and "archived" in basebackup.stdout, basebackup.stdout

        verify = _ok(d.job("pgvault-verify", tool_image))
        assert "0 failure(s)" in verify.stdout and "NOT CHECKED" not in verify.stdout, verify.stdout  # it decrypted

        # The drill as written: skipped unless today (UTC) is the first Saturday.
        drill = _ok(d.job("pgvault-drill", tool_image))
        today = utc_day(dt.datetime.now(dt.UTC))
        c = job_container(cronjobs()["pgvault-drill"], configmaps=d.configmaps, secrets=d.secrets)
        rule = parse_day_rule(c.argv[c.argv.index("--only-on") + 1])
        if rule.is_due(today):
            assert "PASSED" in drill.stdout, drill.stdout
        else:
            assert "skipped: not due" in drill.stdout, drill.stdout
        # On its day, it drills: restore into a throwaway server inside the pod, checks pass.
        due = rule.next_due(today).isoformat() + "T10:00:00Z"
        drilled = _ok(d.job("pgvault-drill", tool_image, extra_args=["--now", due]))
        assert "PASSED" in drilled.stdout and "smoke: organizations" in drilled.stdout, drilled.stdout

        expire = _ok(d.job("pgvault-expire", tool_image))
        assert "applied" in expire.stdout, expire.stdout

        if gateway is not None:  # every job pushed its outcome and the status when it ended
            got = series(gateway)
            for job in ("backup", "basebackup", "verify", "drill", "expire"):
                assert got[f'pgvault_job_last_status{{cluster="prod-main",instance="",job="{job}",pgvault_job="{job}"}}'] == 1, (job, got)
            assert got['pgvault_up{cluster="prod-main",instance="",job="pgvault"}'] == 1
    finally:
        logs = subprocess.run(["podman", "logs", server], capture_output=True, text=True, timeout=60)
        subprocess.run(["podman", "rm", "--force", "--time", "10", server], capture_output=True, timeout=120)
        report = {name: {k: round(v / 2**20, 1) for k, v in m.items()} for name, m in d.memory.items()}
        print("\npeak memory per job (MiB; peak: the container's cgroup incl. page cache, anon: "
              "anonymous + shared):\n" + json.dumps(report, indent=2))
        if os.environ.get("PGVAULT_MEMORY_REPORT"):
            Path(os.environ["PGVAULT_MEMORY_REPORT"]).write_text(json.dumps(report, indent=2))
        if "wal push" in logs.stderr and "error" in logs.stderr.lower():
            print(logs.stderr[-3000:])
