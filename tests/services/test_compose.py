"""infra/compose.yaml (the stack for Docker machines) read as data: no Docker needed.

It must offer the same services as infra/local/up.sh, publish them on 127.0.0.1 only, and take
every credential from the environment with `${VAR:?}` (compose stops if one is missing).
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

INFRA = Path(__file__).resolve().parents[2] / "infra"
COMPOSE = yaml.safe_load((INFRA / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
SECRET_NAMES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "STACK_MLFLOW_DB_PASSWORD",
                "STACK_PREFECT_DB_PASSWORD")


def env_of(service: str) -> dict[str, str]:
    return {k: str(v) for k, v in SERVICES[service].get("environment", {}).items()}


def test_same_services_as_the_local_stack():
    assert SERVICES["postgres"]["image"] == "postgres:15"
    assert SERVICES["minio"]["image"].startswith("minio/minio")
    assert SERVICES["prefect"]["image"] == "prefecthq/prefect:3.8.8-python3.11"
    mlflow = SERVICES["mlflow"]
    assert "--artifacts-destination=s3://mlflow-artifacts" in mlflow["command"]
    assert "requirements-mlflow.txt" in mlflow["build"]["dockerfile_inline"]
    assert (INFRA / mlflow["build"]["context"] / "requirements-mlflow.txt").is_file()
    buckets = SERVICES["createbuckets"]["command"][0]
    for bucket in ("dvc-remote", "mlflow-artifacts", "ray-results"):
        assert f"stack/{bucket}" in buckets
    assert env_of("mlflow")["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    assert env_of("prefect")["PREFECT_SERVER_DATABASE_CONNECTION_URL"].startswith(
        "postgresql+asyncpg://")


def test_ports_are_published_on_loopback_only():
    ports = [p for s in SERVICES.values() for p in s.get("ports", [])]
    assert len(ports) == 5
    assert all(p.startswith("127.0.0.1:") for p in ports), ports


def test_every_credential_comes_from_the_environment():
    text = (INFRA / "compose.yaml").read_text()
    for name in SECRET_NAMES:
        uses = re.findall(r"\$\{" + name + r"(:?[?-])?", text)
        assert uses, name
        assert all(u == ":?" for u in uses), f"{name} must be required (${{{name}:?...}})"
    for service in SERVICES:
        for key, value in env_of(service).items():
            if re.search(r"PASSWORD|SECRET|ACCESS_KEY|ROOT_USER", key):
                assert value.startswith("${") or value.startswith("$$"), (service, key)
