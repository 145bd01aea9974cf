"""Reading deploy/kubernetes as Kubernetes would (pure: no cluster, no kubectl).

:func:`job_container` turns a CronJob's pod template into what the kubelet would run: the argv
(``command`` + ``args``, with ``$(VAR)`` references expanded as Kubernetes does), the environment
(``value``, ``valueFrom`` and ``envFrom`` with ConfigMap and Secret references resolved from the
values a test gives), the files that ConfigMap and Secret volumes put in the container, and the
emptyDir mounts.  The image tests run exactly that; the unit tests check the manifests with it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBE_DIR = ROOT / "deploy" / "kubernetes"

Values = Mapping[str, Mapping[str, str]]  # ConfigMap or Secret name -> key -> value


def load_documents(path: Path) -> list[dict[str, Any]]:
    """Every YAML document of ``path`` that is not empty."""
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def resources(directory: Path = KUBE_DIR) -> list[dict[str, Any]]:
    """The objects of the files kustomization.yaml lists, in its order."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    return [d for name in kustomization["resources"] for d in load_documents(directory / name)]


def cronjobs(directory: Path = KUBE_DIR) -> dict[str, dict[str, Any]]:
    """The CronJobs of the kustomization, by name."""
    return {d["metadata"]["name"]: d for d in resources(directory) if d.get("kind") == "CronJob"}


def configmap_values(directory: Path = KUBE_DIR) -> dict[str, dict[str, str]]:
    """The ConfigMaps of the kustomization as {name: data}."""
    return {d["metadata"]["name"]: dict(d.get("data") or {}) for d in resources(directory) if d.get("kind") == "ConfigMap"}


@dataclass(frozen=True)
class Mount:
    path: str
    volume: str
    kind: str                     # "configMap", "secret", "emptyDir", "persistentVolumeClaim", ...
    read_only: bool
    files: dict[str, str] = field(default_factory=dict)   # file name in the mount -> content
    mode: int | None = None       # the files' mode (defaultMode), configMap/secret only
    size_limit: str | None = None  # emptyDir
    medium: str | None = None      # emptyDir: "Memory" for tmpfs
    claim: str | None = None       # persistentVolumeClaim


@dataclass(frozen=True)
class JobContainer:
    """What a CronJob's (first) container runs, resolved."""

    name: str
    image: str
    argv: list[str]
    env: dict[str, str]
    mounts: list[Mount]
    pod_security: dict[str, Any]
    security: dict[str, Any]
    resources: dict[str, Any]

    def mount(self, path: str) -> Mount:
        [m] = [m for m in self.mounts if m.path == path]
        return m


class Unresolved(KeyError):
    """A reference to a ConfigMap or Secret key the given values do not have (and not optional)."""


def _lookup(values: Values, kind: str, name: str, key: str | None, optional: bool) -> Any:
    source = values.get(name)
    if source is None or (key is not None and key not in source):
        if optional:
            return None
        raise Unresolved(f"{kind} {name!r}" + (f" has no key {key!r}" if source is not None else " is not given"))
    return source if key is None else source[key]


_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: a defined variable is replaced, an undefined reference is
    left as it is, ``$$`` is an escaped ``$``."""
    return _REF.sub(lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def job_container(cronjob: Mapping[str, Any], *, configmaps: Values, secrets: Values, index: int = 0) -> JobContainer:
    """The container ``index`` of ``cronjob``'s pod template, with every reference resolved from
    ``configmaps`` and ``secrets`` ({name: {key: value}}); :class:`Unresolved` for one that is
    missing and not optional."""
    return pod_container(cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"], configmaps=configmaps,
                         secrets=secrets, index=index)


def statefulset_container(sts: Mapping[str, Any], *, configmaps: Values, secrets: Values, index: int = 0) -> JobContainer:
    """The same for a StatefulSet; a volume from its volumeClaimTemplates is a ``persistentVolumeClaim``
    mount whose ``claim`` is the claim of its first pod (``<template>-<statefulset>-0``)."""
    claims = {t["metadata"]["name"]: f"{t['metadata']['name']}-{sts['metadata']['name']}-0"
              for t in sts["spec"].get("volumeClaimTemplates", [])}
    return pod_container(sts["spec"]["template"]["spec"], configmaps=configmaps, secrets=secrets, index=index,
                         claims=claims)


def pod_container(pod: Mapping[str, Any], *, configmaps: Values, secrets: Values, index: int = 0,
                  claims: Mapping[str, str] | None = None) -> JobContainer:
    """Container ``index`` of a pod spec, resolved (see :func:`job_container`)."""
    c = pod["containers"][index]
    env: dict[str, str] = {}
    # envFrom first, then env: an explicit variable wins (the kubelet's order).
    for source in c.get("envFrom", []):
        prefix = source.get("prefix", "")
        for kind, values in (("configMapRef", configmaps), ("secretRef", secrets)):
            if kind in source:
                ref = source[kind]
                data = _lookup(values, kind, ref["name"], None, bool(ref.get("optional")))
                env.update({prefix + k: v for k, v in (data or {}).items()})
    for var in c.get("env", []):
        if "value" in var:
            env[var["name"]] = expand(str(var["value"]), env)
        elif "valueFrom" in var:
            vf = var["valueFrom"]
            for kind, values in (("configMapKeyRef", configmaps), ("secretKeyRef", secrets)):
                if kind in vf:
                    ref = vf[kind]
                    value = _lookup(values, kind, ref["name"], ref["key"], bool(ref.get("optional")))
                    if value is not None:
                        env[var["name"]] = value
                    break
            else:
                raise ValueError(f"unsupported valueFrom in {var['name']}: {sorted(vf)}")
        else:
            env[var["name"]] = ""
    argv = [expand(str(a), env) for a in (c.get("command") or []) + (c.get("args") or [])]

    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = []
    for vm in c.get("volumeMounts", []):
        vol = volumes.get(vm["name"]) or {"name": vm["name"], "persistentVolumeClaim": {"claimName": (claims or {})[vm["name"]]}}
        kind = next(k for k in vol if k != "name")
        spec = vol[kind] or {}
        files: dict[str, str] = {}
        if kind in ("configMap", "secret"):
            name = spec["name"] if kind == "configMap" else spec["secretName"]
            data = _lookup(configmaps if kind == "configMap" else secrets, kind, name, None, bool(spec.get("optional"))) or {}
            items = spec.get("items")
            files = ({item["path"]: data[item["key"]] for item in items} if items else dict(data))
        mounts.append(Mount(path=vm["mountPath"], volume=vm["name"], kind=kind, read_only=bool(vm.get("readOnly")),
                            files=files, mode=spec.get("defaultMode") if kind in ("configMap", "secret") else None,
                            size_limit=spec.get("sizeLimit") if kind == "emptyDir" else None,
                            medium=spec.get("medium") if kind == "emptyDir" else None,
                            claim=spec.get("claimName") if kind == "persistentVolumeClaim" else None))
    return JobContainer(name=c["name"], image=c["image"], argv=argv, env=env, mounts=mounts,
                        pod_security=dict(pod.get("securityContext") or {}), security=dict(c.get("securityContext") or {}),
                        resources=dict(c.get("resources") or {}))
