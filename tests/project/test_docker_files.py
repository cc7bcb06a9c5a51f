"""The container and cluster files parse and keep their promises (no Docker needed)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN", re.IGNORECASE)
URL_PASSWORD = re.compile(r"://[^:/@\s]+:([^@\s]+)@")


def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []


def test_compose_services() -> None:
    services = compose()["services"]
    assert {"postgres", "mlflow", "hpo", "campaign"} <= set(services)
    server = " ".join(_strings(services["mlflow"]["command"]))
    assert "mlflow server" in server and "--serve-artifacts" in server
    assert "--artifacts-destination /artifacts" in server
    assert "postgresql+psycopg2://" in server and "@postgres:5432/mlflow" in server
    assert any(v.startswith("mlflow-artifacts:/artifacts") for v in services["mlflow"]["volumes"])
    hpo = " ".join(_strings(services["hpo"]["entrypoint"]))
    assert hpo.startswith("al hpo --storage postgresql+psycopg2://") and "/optuna" in hpo
    assert services["campaign"]["entrypoint"][:2] == ["al", "al-loop"]
    for name in ("hpo", "campaign"):
        assert services[name]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert services["experiment"]["entrypoint"] == ["al", "experiment"]
    assert "experiments/smoke.yaml" in services["experiment"]["command"]
    # every worker keeps the cache and the label journal on the shared volume
    for name in ("hpo", "campaign", "experiment"):
        assert "al-cache:/cache" in services[name]["volumes"]
    assert "al-cache" in compose()["volumes"]
    init = (DOCKER / "initdb.sql").read_text()
    assert "CREATE DATABASE optuna" in init


def test_compose_ports_are_local_only() -> None:
    published = [
        (name, port) for name, svc in compose()["services"].items() for port in svc.get("ports", [])
    ]
    assert published, "the server and the database publish a port"
    for name, port in published:
        host_ip = port.get("host_ip") if isinstance(port, dict) else str(port)
        assert host_ip.startswith("127.0.0.1"), f"{name} publishes {port} beyond localhost"


def test_compose_has_no_literal_secrets() -> None:
    services = compose()["services"]
    for name, svc in services.items():
        env = svc.get("environment", {})
        assert isinstance(env, dict), f"{name}: environment as a mapping"
        for key, value in env.items():
            if SECRET_KEY.search(key):
                assert re.fullmatch(r"\$\{\w+:\?[^}]*\}", str(value)), f"{name}: {key}={value}"
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith(
        "${POSTGRES_PASSWORD:?"
    )
    # every password inside a URL is a variable, expanded in the container
    for text in _strings(services):
        for password in URL_PASSWORD.findall(text):
            assert password.startswith("$${"), text


def test_dockerfile_base_and_install_order() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", text, re.MULTILINE)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.MULTILINE)
    torch = text.index('pip install "torch==')
    package = text.index('pip install ".[postgres,cluster]"')
    assert torch < package, "torch is installed before the package"
    # the grids of the `experiment` entry, found from MLflow's own working folder
    assert re.search(r"^COPY experiments \./experiments$", text, re.MULTILINE)
    assert "AL_PROJECT_DIR=/app" in text and "AL_JOURNAL_DIR=/cache/journal" in text
    for path in re.findall(r"^COPY (.+) \./", text, re.MULTILINE):
        for item in path.split():
            assert (REPO / item).exists(), f"COPY {item}: no such path"


def test_kubernetes_backend_files() -> None:
    config = json.loads((DOCKER / "kubernetes_config.json").read_text())
    assert config["repository-uri"]
    template_path = REPO / config["kube-job-template-path"]  # relative to the repository root
    assert template_path.is_file()
    job = yaml.safe_load(template_path.read_text())
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    # MLflow reads metadata.namespace and replaces the name, container name, image, command
    assert job["metadata"]["namespace"]
    assert job["metadata"]["name"] == "{replaced with MLflow Project name}"
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] in ("Never", "OnFailure")
    container = spec["containers"][0]
    assert container["name"] == "{replaced with MLflow Project name}"
    assert container["image"].startswith("{replaced with")
    assert container["command"] == ["{replaced with MLflow Project entry point command}"]
    assert all(isinstance(e, dict) and "name" in e for e in container["env"])  # MLflow appends
    for e in container["env"]:
        if SECRET_KEY.search(e["name"]):
            assert "valueFrom" in e and "value" not in e
    # threads come from the pod's CPU limit, never from the node's cores
    env = {e["name"]: e for e in container["env"]}
    assert env["AL_CPUS"]["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu"
    assert container["resources"]["limits"]["cpu"]
    # the cache and the label journal live on a volume
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert env["AL_JOURNAL_DIR"]["value"].startswith(mounts["al-cache"] + "/")
    assert env["AL_CACHE_DIR"]["value"] == mounts["al-cache"]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"]}
    assert claims["al-cache"]


def test_docker_mlproject_matches_the_main_one() -> None:
    main = yaml.safe_load((REPO / "MLproject").read_text())
    docker = yaml.safe_load((DOCKER / "MLproject").read_text())
    assert docker["name"] == main["name"]
    assert docker["docker_env"]["image"]  # the Kubernetes backend needs a docker_env
    assert "al-cache:/cache" in docker["docker_env"]["volumes"]
    assert docker["entry_points"] == main["entry_points"]
