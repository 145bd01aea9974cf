"""deploy/kubernetes: every manifest is valid against the Kubernetes API schemas (kubernetes-validate,
offline, pinned), the kustomization lists every file and builds, and the CronJobs keep the rules
their README promises (UTC, no overlap, deadlines, limits, least privilege, non-root, read-only
root).  tests/support/manifests.py, which the image tests use to run each CronJob as written, is
tested here too."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pgvault.cli import build_parser
from pgvault.config import load_settings
from pgvault.errors import ConfigError
from pgvault.policy.schedule import MonthlyWeekday, parse_day_rule
from support.manifests import (
    KUBE_DIR,
    Unresolved,
    configmap_values,
    cronjobs,
    expand,
    job_container,
    load_documents,
    resources,
)

# The Kubernetes versions the manifests are checked against: the newest that kubernetes-validate
# (pinned in pyproject.toml) ships schemas for, and the oldest we claim (CronJob timeZone is GA
# since 1.27; 1.30 is the oldest still maintained by the big providers).
K8S_VERSIONS = ("1.30.0", "1.37.0")
JOBS = {"pgvault-backup", "pgvault-basebackup", "pgvault-expire", "pgvault-verify", "pgvault-drill",
        "pgvault-repo-sync"}
RECIPIENT = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"
SECRETS = {"pgvault-postgres": {"PGPASSWORD": "pw"},
           "pgvault-s3": {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret"},
           "pgvault-age-identity": {"identity.txt": "AGE-SECRET-KEY-1..."}}


def _manifest_files() -> list[Path]:
    return sorted(p for p in KUBE_DIR.glob("*.yaml") if p.name != "kustomization.yaml")


def _container(name: str):  # type: ignore[no-untyped-def]
    return job_container(cronjobs()[name], configmaps=configmap_values(), secrets=SECRETS)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: p.name)
def test_every_manifest_is_valid_kubernetes(path: Path, version: str) -> None:
    import kubernetes_validate

    docs = load_documents(path)
    assert docs, f"{path.name} holds no object"
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)  # raises ValidationError, naming the field


def test_the_kustomization_lists_every_file_and_only_existing_ones() -> None:
    k = yaml.safe_load((KUBE_DIR / "kustomization.yaml").read_text())
    listed = list(k["resources"])
    assert len(listed) == len(set(listed))
    assert all((KUBE_DIR / r).exists() for r in listed), [r for r in listed if not (KUBE_DIR / r).exists()]
    # Every manifest is applied, except the example Secrets (real ones never live in the repository).
    files = {p.name for p in _manifest_files()}
    assert files - set(listed) == {"secrets.example.yaml"}
    assert {i["name"] for i in k["images"]} == {"pgvault/pgvault", "pgvault/pgvault-postgres"}
    used = {c["image"].split(":")[0] for d in resources() for c in _pod(d).get("containers", [])}
    assert used == {"pgvault/pgvault", "pgvault/pgvault-postgres"}


def _pod(doc: dict) -> dict:  # type: ignore[type-arg]
    if doc["kind"] == "CronJob":
        return dict(doc["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    if doc["kind"] in ("StatefulSet", "Deployment"):
        return dict(doc["spec"]["template"]["spec"])
    return {}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_the_kustomization_builds() -> None:
    out = subprocess.run(["kubectl", "kustomize", str(KUBE_DIR)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert {d["metadata"]["name"] for d in docs if d["kind"] == "CronJob"} == JOBS
    assert all(d["metadata"].get("namespace") == "pgvault" for d in docs if d["kind"] != "Namespace")
    images = {c["image"] for d in docs for c in _pod(d).get("containers", [])}
    assert images == {"pgvault/pgvault:0.1.0", "pgvault/pgvault-postgres:0.1.0"}


def test_the_cronjobs_and_their_schedules() -> None:
    jobs = cronjobs()
    assert set(jobs) == JOBS
    schedules = {name: j["spec"]["schedule"] for name, j in jobs.items()}
    assert schedules["pgvault-backup"] == "0 2 * * *"          # nightly, 02:00 UTC
    assert schedules["pgvault-drill"] == "0 10 * * 6"          # every Saturday; --only-on picks the first
    assert schedules["pgvault-verify"].endswith("* * 0")        # weekly
    # expire after the night's backups
    assert int(schedules["pgvault-expire"].split()[1]) > int(schedules["pgvault-backup"].split()[1])
    for name, j in jobs.items():
        spec, job = j["spec"], j["spec"]["jobTemplate"]["spec"]
        assert spec["timeZone"] == "Etc/UTC" and spec["concurrencyPolicy"] == "Forbid", name
        assert 0 < spec["startingDeadlineSeconds"] <= 86400, name
        assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1, name
        assert job["backoffLimit"] in (0, 1) and job["activeDeadlineSeconds"] > 0, name
        assert job["template"]["spec"]["restartPolicy"] == "Never", name


def test_the_repo_sync_is_suspended_until_a_second_repository_is_configured() -> None:
    job = cronjobs()["pgvault-repo-sync"]
    assert job["spec"]["suspend"] is True and job["spec"]["schedule"] == "*/15 * * * *"
    c = _container("pgvault-repo-sync")
    assert c.argv[:3] == ["pgvault", "repo", "sync"]
    args = build_parser("repo").parse_args(c.argv[1:])
    assert args.what == "sync" and args.parallel == 4


def test_the_drill_runs_only_on_the_first_saturday() -> None:
    c = _container("pgvault-drill")
    assert c.argv[:2] == ["pgvault", "drill"]
    rule = c.argv[c.argv.index("--only-on") + 1]
    assert parse_day_rule(rule) == MonthlyWeekday(1, 5)


@pytest.mark.parametrize("name", sorted(JOBS))
def test_every_job_runs_a_valid_pgvault_command(name: str) -> None:
    c = _container(name)
    assert c.argv[0] == "pgvault"
    args = build_parser(c.argv[1]).parse_args(c.argv[1:])
    assert args.command == c.argv[1] and getattr(args, "func", None)


@pytest.mark.parametrize("name", sorted(JOBS))
def test_every_job_is_locked_down(name: str) -> None:
    pod = _pod(cronjobs()[name])
    assert pod["serviceAccountName"] == "pgvault" and pod["automountServiceAccountToken"] is False
    c = _container(name)
    assert c.pod_security["runAsNonRoot"] is True and c.pod_security["runAsUser"] > 0
    assert c.pod_security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c.security == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                          "capabilities": {"drop": ["ALL"]}}
    req, lim = c.resources["requests"], c.resources["limits"]
    assert req["memory"] and req["cpu"] and lim["memory"] and "cpu" not in lim  # no CPU throttling of zstd
    # A writable scratch directory where TMPDIR points (the root filesystem is read-only).
    tmp = c.mount(c.env["TMPDIR"])
    assert tmp.kind == "emptyDir" and tmp.size_limit and not tmp.read_only
    assert c.mount("/tmp").kind == "emptyDir"


@pytest.mark.parametrize("name", sorted(JOBS))
def test_every_job_gets_the_config_and_only_the_secrets_it_needs(name: str) -> None:
    c = _container(name)
    config = c.env["PGVAULT_CONFIG"]
    mount = c.mount(str(Path(config).parent))
    assert mount.kind == "configMap" and mount.read_only and Path(config).name in mount.files
    assert c.env["AWS_ACCESS_KEY_ID"] == "id" and c.env["AWS_SECRET_ACCESS_KEY"] == "secret"
    connects = name in ("pgvault-backup", "pgvault-basebackup")
    assert ("PGPASSWORD" in c.env) == connects, "the PostgreSQL password only where pgvault connects"
    decrypts = name in ("pgvault-drill", "pgvault-verify")
    identity = c.env.get("PGVAULT_ENCRYPTION_AGE_IDENTITY_FILE")
    assert (identity is not None) == decrypts, "the age identity only in the jobs that decrypt"
    if identity:
        m = c.mount(str(Path(identity).parent))
        assert m.kind == "secret" and m.read_only and m.mode == 0o440 and Path(identity).name in m.files
    # Secrets come by reference only: no literal value of a sensitive variable in a manifest.
    pod = _pod(cronjobs()[name])
    for var in pod["containers"][0].get("env", []):
        if any(w in var["name"] for w in ("PASSWORD", "SECRET", "KEY", "TOKEN")):
            assert "value" not in var, var


def test_the_base_backup_reads_the_servers_data_volume_on_its_node() -> None:
    c = _container("pgvault-basebackup")
    pgdata = c.argv[c.argv.index("--pgdata") + 1]
    m = c.mount("/var/lib/postgresql/data")
    assert m.kind == "persistentVolumeClaim" and m.read_only and m.claim == "data-postgres-0"
    assert pgdata.startswith(m.path + "/")
    [sts] = [d for d in resources() if d["kind"] == "StatefulSet"]
    server_env = {e["name"]: e.get("value") for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert server_env["PGDATA"] == pgdata  # the same directory the server uses
    assert c.pod_security["runAsUser"] == sts["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    claim = f"{sts['spec']['volumeClaimTemplates'][0]['metadata']['name']}-{sts['metadata']['name']}-0"
    assert claim == m.claim
    affinity = _pod(cronjobs()["pgvault-basebackup"])["affinity"]["podAffinity"]
    [term] = affinity["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == {"statefulset.kubernetes.io/pod-name": f"{sts['metadata']['name']}-0"}


def test_the_server_archives_with_the_same_config_and_keeps_its_spool_on_the_data_volume() -> None:
    [sts] = [d for d in resources() if d["kind"] == "StatefulSet"]
    c = sts["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert mounts[str(Path(env["PGVAULT_CONFIG"]).parent)] == "config"
    assert {"secretRef": {"name": "pgvault-s3"}} in c["envFrom"]
    data_mount = next(p for p, n in mounts.items() if n == "data")
    assert env["PGDATA"].startswith(data_mount + "/")  # spool default: PGDATA/pg_wal/pgvault
    assert "spool_dir" not in configmap_values()["pgvault-config"]["pgvault.yaml"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True and "/tmp" in mounts


def test_the_config_map_is_a_valid_config_once_the_recipient_is_set(tmp_path: Path) -> None:
    text = configmap_values()["pgvault-config"]["pgvault.yaml"]
    path = tmp_path / "pgvault.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:  # the placeholder refuses to run: never unencrypted by mistake
        load_settings(str(path), environ={})
    assert any("age" in p for p in e.value.problems)
    path.write_text(text.replace("age1-REPLACE-WITH-YOUR-AGE-PUBLIC-KEY", RECIPIENT))
    s = load_settings(str(path), environ={})
    assert s.age_recipients == (RECIPIENT,) and s.metrics_pushgateway and s.repository_url.startswith("s3://")
    assert s.spool_dir is None


# --- tests/support/manifests.py ----------------------------------------------------------------


def test_expand_follows_kubernetes() -> None:
    env = {"A": "1", "B": "x y"}
    assert expand("$(A)-$(B)", env) == "1-x y"
    assert expand("$(MISSING)", env) == "$(MISSING)"  # undefined: left as is
    assert expand("$$(A) costs $$5", env) == "$(A) costs $5"


def test_job_container_resolves_references() -> None:
    cronjob = {"spec": {"jobTemplate": {"spec": {"template": {"spec": {
        "containers": [{
            "name": "c", "image": "i",
            "command": ["pgvault"], "args": ["drill", "--only-on", "$(RULE)"],
            "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}, {"secretRef": {"name": "absent", "optional": True}}],
            "env": [{"name": "RULE", "value": "first saturday"},
                    {"name": "CM_X", "value": "explicit wins"},
                    {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "s", "key": "pw"}}},
                    {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "nope", "optional": True}}}],
            "volumeMounts": [{"name": "v", "mountPath": "/etc/x", "readOnly": True}, {"name": "t", "mountPath": "/tmp"}],
        }],
        "volumes": [{"name": "v", "secret": {"secretName": "s", "items": [{"key": "pw", "path": "pw.txt"}], "defaultMode": 0o400}},
                    {"name": "t", "emptyDir": {"sizeLimit": "1Gi"}}],
    }}}}}}
    c = job_container(cronjob, configmaps={"cm": {"X": "from map", "Y": "y"}}, secrets={"s": {"pw": "hunter2"}})
    assert c.argv == ["pgvault", "drill", "--only-on", "first saturday"]
    assert c.env == {"CM_X": "explicit wins", "CM_Y": "y", "RULE": "first saturday", "PW": "hunter2"}
    assert c.mount("/etc/x").files == {"pw.txt": "hunter2"} and c.mount("/etc/x").mode == 0o400
    assert c.mount("/tmp").kind == "emptyDir" and c.mount("/tmp").size_limit == "1Gi"
    with pytest.raises(Unresolved, match="secretKeyRef 's' has no key 'pw'"):
        job_container(cronjob, configmaps={"cm": {}}, secrets={"s": {}})
    with pytest.raises(Unresolved, match="configMapRef 'cm' is not given"):
        job_container(cronjob, configmaps={}, secrets={"s": {"pw": ""}})


def test_statefulset_container_resolves_the_claim_of_its_first_pod() -> None:
    from support.manifests import statefulset_container

    [sts] = [d for d in resources() if d["kind"] == "StatefulSet"]
    c = statefulset_container(sts, configmaps=configmap_values(), secrets=SECRETS)
    assert c.mount("/var/lib/postgresql/data").claim == "data-postgres-0"
    assert c.env["PGVAULT_CONFIG"] == "/etc/pgvault/pgvault.yaml" and c.env["AWS_SECRET_ACCESS_KEY"] == "secret"
    assert c.mount("/etc/postgres-secret").files == {"PGPASSWORD": "pw"}
