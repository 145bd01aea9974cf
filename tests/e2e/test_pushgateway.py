"""Metrics into a real Prometheus Pushgateway (Debian's prometheus-pushgateway; skipped without it):
``metrics --push`` with several job records (one group per job, job=<job>; the series name their job
in ``pgvault_job``, since the Pushgateway overwrites a pushed ``job`` label with its group's), and
``metrics.pushgateway``: every scheduled job pushes the status and its own outcome when it ends,
also when the repository cannot be read (the Kubernetes CronJobs rely on this), without erasing
the other jobs' series."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.cli import clean_env, pgvault
from support.pushgateway import BINARY, pushgateway
from support.pushgateway import series as _series

pytestmark = pytest.mark.skipif(BINARY is None, reason="prometheus-pushgateway is not installed (apt-get install prometheus-pushgateway)")


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[str]:
    with pushgateway(tmp_path) as url:
        yield url


def test_push_with_several_jobs_and_every_job_pushing_at_its_end(gateway: str, tmp_path: Path) -> None:
    env = clean_env(PGVAULT_REPOSITORY_URL=str(tmp_path / "repo"), PGVAULT_CLUSTER="kube")
    (tmp_path / "repo").mkdir()
    pgvault(["expire", "--apply"], env)
    pgvault(["verify", "--all"], env, check=False)  # nothing to verify: exit 5, a failed job record
    pgvault(["metrics", "--no-connect", "--push", gateway], env)
    got = _series(gateway)
    assert got['pgvault_up{cluster="kube",instance="",job="pgvault"}'] == 1
    assert got['pgvault_job_last_status{cluster="kube",instance="",job="expire",pgvault_job="expire"}'] == 1
    assert got['pgvault_job_last_status{cluster="kube",instance="",job="verify",pgvault_job="verify"}'] == 0

    # metrics.pushgateway: the job itself pushes, no second command.
    env_push = {**env, "PGVAULT_METRICS_PUSHGATEWAY": gateway}
    pgvault(["verify", "--all"], env_push, check=False)
    before = got['pgvault_job_last_failure_timestamp{cluster="kube",instance="",job="verify",pgvault_job="verify"}']
    assert _series(gateway)['pgvault_job_last_failure_timestamp{cluster="kube",instance="",job="verify",pgvault_job="verify"}'] > before
    pgvault(["expire", "--apply"], env_push)
    got = _series(gateway)
    assert got['pgvault_job_last_exit_code{cluster="kube",instance="",job="expire",pgvault_job="expire"}'] == 0
    assert got['pgvault_repository_objects{cluster="kube",instance="",job="pgvault"}'] >= 2  # the status came along

    # The repository is gone: the job fails, and the gateway hears it (pgvault_up 0, the failure).
    r = pgvault(["expire"], {**env_push, "PGVAULT_REPOSITORY_URL": str(tmp_path / "gone")}, check=False)
    assert r.returncode == 4, str(r)
    got = _series(gateway)
    assert got['pgvault_up{cluster="kube",instance="",job="pgvault"}'] == 0
    assert got['pgvault_job_last_status{cluster="kube",instance="",job="expire",pgvault_job="expire"}'] == 0
    assert got['pgvault_job_last_exit_code{cluster="kube",instance="",job="expire",pgvault_job="expire"}'] == 4
    # That push carried only expire's series: verify's group (its failure) is still there.
    assert got['pgvault_job_last_status{cluster="kube",instance="",job="verify",pgvault_job="verify"}'] == 0


def test_an_unreachable_gateway_never_changes_the_jobs_outcome(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    (tmp_path / "repo").mkdir()
    env = clean_env(PGVAULT_REPOSITORY_URL=str(tmp_path / "repo"), PGVAULT_METRICS_PUSHGATEWAY=f"http://127.0.0.1:{port}")
    r = pgvault(["expire", "--apply"], env)
    assert r.returncode == 0 and "could not push the job's metrics" in r.stderr
