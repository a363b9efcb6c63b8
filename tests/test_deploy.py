"""deploy/: the Kubernetes workers and the KubeRay RayJob, checked without a cluster.

Kubernetes objects are validated against Kubernetes' published JSON schemas (the
``kubernetes-validate`` package ships them), strict: an unknown or misspelt field fails.
The RayJob CRD's own schema is not on any package registry reachable here, so the RayJob
is checked in parts: each pod template against Kubernetes' PodTemplateSpec schema, and the
RayJob fields KubeRay's ray.io/v1 CRD requires, by name. The commands are real `guard`
invocations, proven through the CLI's own --help.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml  # type: ignore[import-untyped]
from typer.testing import CliRunner

from guard.cli import app

REPO = Path(__file__).resolve().parents[1]
K8S_VERSION = "1.33.0"


def _documents(relative: str) -> list[dict[str, Any]]:
    text = (REPO / relative).read_text(encoding="utf-8")
    return [doc for doc in yaml.safe_load_all(text) if doc]


def _validate(resource: dict[str, Any]) -> None:
    kubernetes_validate.validate(resource, K8S_VERSION, strict=True)


def _pod_templates(resource: dict[str, Any]) -> list[dict[str, Any]]:
    if resource["kind"] == "RayJob":
        cluster = resource["spec"]["rayClusterSpec"]
        groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
        return [group["template"] for group in groups]
    return [resource["spec"]["template"]]


def _containers(resource: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for t in _pod_templates(resource) for c in t["spec"]["containers"]]


def _assert_dsn_from_a_secret(resource: dict[str, Any]) -> None:
    """Every container takes GUARD_STATE_DSN from a Secret; no literal DSN anywhere."""
    for container in _containers(resource):
        env = {item["name"]: item for item in container.get("env", [])}
        assert "secretKeyRef" in env["GUARD_STATE_DSN"]["valueFrom"], container["name"]
        assert all("postgresql://" not in str(item.get("value", "")) for item in env.values())


def _guard_help(argv: list[str]) -> str:
    """`guard ... --help` for a command line, with its job id placeholder: it parses."""
    assert argv[0] == "guard"
    shown = CliRunner().invoke(app, [*argv[1:], "--help"])
    assert shown.exit_code == 0, shown.output
    return str(shown.output)


def test_the_workers_deployment_is_a_valid_kubernetes_object() -> None:
    (deployment,) = _documents("deploy/k8s/workers.yaml")
    _validate(deployment)
    _assert_dsn_from_a_secret(deployment)
    (container,) = _containers(deployment)
    command = container["command"]
    assert command[command.index("reindex") : command.index("reindex") + 3] == [
        "reindex", "run", "$(GUARD_JOB_ID)"
    ]  # fmt: skip
    _guard_help(command)
    names = [item["name"] for item in container["env"]]
    assert "GUARD_JOB_ID" in names and names.index("GUARD_JOB_ID") == 0  # $(...) needs it first


def test_a_misspelt_field_fails_the_strict_schema() -> None:
    """The validation is real: the same Deployment with one field misspelt is refused."""
    (deployment,) = _documents("deploy/k8s/workers.yaml")
    deployment["spec"]["template"]["spec"]["containers"][0]["enviroment"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(deployment)


def test_the_rayjob_pod_templates_are_valid_kubernetes_pod_templates() -> None:
    (rayjob,) = _documents("deploy/kuberay/rayjob.yaml")
    for template in _pod_templates(rayjob):
        _validate(
            {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
             "template": template}
        )  # fmt: skip
    _assert_dsn_from_a_secret(rayjob)


def test_the_rayjob_has_kuberays_required_fields_and_runs_the_guard_on_gpus() -> None:
    """ray.io/v1 RayJob: entrypoint and rayClusterSpec (headGroupSpec with rayStartParams
    and template; each worker group with groupName, rayStartParams, template). The
    entrypoint is `guard reindex run ... --ray auto`, and the workers hold a GPU for
    each actor."""
    (rayjob,) = _documents("deploy/kuberay/rayjob.yaml")
    assert (rayjob["apiVersion"], rayjob["kind"]) == ("ray.io/v1", "RayJob")
    spec = rayjob["spec"]
    cluster = spec["rayClusterSpec"]
    assert {"rayStartParams", "template"} <= set(cluster["headGroupSpec"])
    for group in cluster["workerGroupSpecs"]:
        assert {"groupName", "rayStartParams", "template"} <= set(group)
    argv = shlex.split(spec["entrypoint"])
    assert argv[:3] == ["guard", "reindex", "run"]
    assert "--gpus-per-actor" in _guard_help(argv)
    option = {argv[i]: argv[i + 1] for i in range(4, len(argv) - 1, 2)}
    assert option["--ray"] == "auto"
    actors, gpus = int(option["--actors"]), float(option["--gpus-per-actor"])
    held = sum(
        group["replicas"] * int(c["resources"]["limits"].get("nvidia.com/gpu", 0))
        for group in cluster["workerGroupSpecs"]
        for c in group["template"]["spec"]["containers"]
    )
    assert held >= actors * gpus > 0
    head_env = {
        e["name"] for e in cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert "GUARD_JOB_ID" in head_env  # the entrypoint's "$GUARD_JOB_ID"
