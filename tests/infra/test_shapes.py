"""Shape tests of infra/: what the schemas cannot say about the manifests (pure YAML, fast).

A schema accepts a RayJob that never shuts its cluster down, a GPU group without a GPU, or
an image tag from last release; these tests do not.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "infra" / "k8s"
HELM = REPO / "infra" / "helm"
GPU = "nvidia.com/gpu"
IMAGE_NAME = "i2i-unlearn"


def load_all(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def k8s_objects() -> list[dict]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in load_all(path)]


def of_kind(kind: str) -> list[dict]:
    return [doc for doc in k8s_objects() if doc.get("kind") == kind]


def cluster_specs() -> list[tuple[str, dict]]:
    """Every Ray cluster spec: the RayClusters' and the ones RayJobs bring along."""
    specs = [(f"RayCluster/{c['metadata']['name']}", c["spec"]) for c in of_kind("RayCluster")]
    specs += [(f"RayJob/{j['metadata']['name']}", j["spec"]["rayClusterSpec"])
              for j in of_kind("RayJob") if "rayClusterSpec" in j["spec"]]
    return specs


def gpus(container: dict, part: str = "limits") -> int:
    return int(container.get("resources", {}).get(part, {}).get(GPU, 0))


def gpu_budget() -> int:
    """GPUs the RayCluster may hold at most: sum over its GPU groups of maxReplicas x GPUs."""
    (cluster,) = of_kind("RayCluster")
    return sum(g["maxReplicas"] * sum(gpus(c) for c in g["template"]["spec"]["containers"])
               for g in cluster["spec"]["workerGroupSpecs"])


def project_version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def locked(package: str) -> str:
    match = re.search(rf"^{package}==([^\s+]+)", (REPO / "requirements.lock").read_text(), re.M)
    assert match, f"{package} is not pinned in requirements.lock"
    return match.group(1)


def base_job_template() -> dict:
    return json.loads((K8S / "prefect" / "base-job-template.json").read_text())


def work_pool() -> dict:
    return yaml.safe_load((K8S / "prefect" / "work-pool.yaml").read_text())


def helm(chart: str) -> dict:
    return yaml.safe_load((HELM / f"{chart}.values.yaml").read_text())


def config() -> dict[str, str]:
    (cm,) = [c for c in of_kind("ConfigMap") if c["metadata"]["name"] == "i2i-unlearn-env"]
    return cm["data"]


def images(node: Any) -> list[str]:
    """Every value of an `image` key, anywhere in a manifest."""
    if isinstance(node, dict):
        found = [v for k, v in node.items() if k == "image" and isinstance(v, str)]
        return found + [i for v in node.values() for i in images(v)]
    if isinstance(node, list):
        return [i for v in node for i in images(v)]
    return []


def ray_overrides(entrypoint: str) -> dict[str, str]:
    """The `-S key=value` params overrides of a `dvc exp run` in an entrypoint."""
    return dict(re.findall(r"-S\s+([\w.]+)=(\S+)", entrypoint))


# --- RayJobs shut down --------------------------------------------------------------------

def test_there_is_a_rayjob_and_a_raycluster():
    assert of_kind("RayJob") and of_kind("RayCluster")


@pytest.mark.parametrize("job", of_kind("RayJob"), ids=lambda j: j["metadata"]["name"])
def test_every_rayjob_shuts_its_cluster_down(job):
    spec = job["spec"]
    assert spec.get("shutdownAfterJobFinishes") is True
    # shutdown applies to a cluster the job created, never to a shared one it selected
    assert "rayClusterSpec" in spec and "clusterSelector" not in spec
    assert isinstance(spec.get("ttlSecondsAfterFinished"), int)
    assert spec["ttlSecondsAfterFinished"] <= 3600, "a finished cluster must not linger for hours"
    assert spec.get("activeDeadlineSeconds", 0) > 0, "a stuck job must not hold GPUs forever"


def test_rayjob_runs_a_pipeline_stage_with_cluster_params():
    (job,) = of_kind("RayJob")
    entry = job["spec"]["entrypoint"]
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert re.search(rf"dvc exp run .* ({'|'.join(stages)})\b", entry), entry
    overrides = ray_overrides(entry)
    known = yaml.safe_load((REPO / "params.yaml").read_text())["ray"]
    assert {k.split(".", 1)[1] for k in overrides} <= set(known), "unknown ray.* param"
    # use_gpu=auto would see no GPU before the autoscaler brings the first worker
    assert overrides["ray.use_gpu"] == "true"
    assert 1 <= int(overrides["ray.num_workers"]) <= gpu_budget()
    assert overrides["ray.storage_path"].startswith("s3://ray-results/")
    assert "s3://dvc-remote" in entry


def test_rayjob_brings_the_same_cluster_as_the_raycluster():
    (cluster,) = of_kind("RayCluster")
    for job in of_kind("RayJob"):
        assert job["spec"]["rayClusterSpec"] == cluster["spec"], "edit both, or neither"


# --- GPU workers ask for GPUs -------------------------------------------------------------

@pytest.mark.parametrize(("name", "spec"), cluster_specs(), ids=[n for n, _ in cluster_specs()])
def test_gpu_worker_groups_request_gpus_on_gpu_nodes(name, spec):
    assert spec.get("enableInTreeAutoscaling") is True, name
    assert spec["rayVersion"] == locked("ray"), "the image's Ray must be the cluster's"
    head = spec["headGroupSpec"]["template"]["spec"]
    assert not any(gpus(c) for c in head["containers"]), "the head holds no GPU"
    groups = spec["workerGroupSpecs"]
    assert groups
    for group in groups:
        pod = group["template"]["spec"]
        ray_container = pod["containers"][0]
        assert gpus(ray_container) >= 1, f"{group['groupName']}: no {GPU} limit"
        # extended resources: requests, when given, must equal limits
        assert gpus(ray_container, "requests") in (0, gpus(ray_container))
        assert any(t.get("key") == GPU and t.get("effect") in (None, "NoSchedule")
                   for t in pod.get("tolerations", [])), "GPU nodes are tainted"
        assert pod.get("nodeSelector"), "GPU workers must be placed on GPU nodes"
        assert 0 <= group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]
        assert group["maxReplicas"] >= 1


# --- one image, the project's version -----------------------------------------------------

def all_project_images() -> list[str]:
    refs = [i for doc in k8s_objects() for i in images(doc)]
    template_vars = base_job_template()["variables"]["properties"]
    refs.append(template_vars["image"]["default"])
    deployments = yaml.safe_load((K8S / "prefect" / "prefect.yaml").read_text())["deployments"]
    refs += [d["work_pool"]["job_variables"]["image"] for d in deployments]
    worker = helm("prefect-worker")["worker"]["image"]
    refs.append(f"{worker['repository']}:{worker['prefectTag']}")
    return refs


def test_every_image_is_the_project_image_at_the_project_version():
    refs = all_project_images()
    assert len(refs) >= 6
    for ref in refs:
        repo, _, tag = ref.rpartition(":")
        assert repo.rsplit("/", 1)[-1] == IMAGE_NAME, ref
        assert tag == project_version(), f"{ref}: the tag must be pyproject's version"
    assert len({r.rpartition(":")[0] for r in refs}) == 1, "one registry path for all of them"


def test_documented_build_commands_use_the_project_version():
    for path in (REPO / "Dockerfile", K8S / "README.md"):
        tags = re.findall(rf"{IMAGE_NAME}:([\w.\-]+)", path.read_text())
        assert tags, path
        assert set(tags) == {project_version()}, path


def test_dockerfile_installs_the_project_with_the_locked_pins():
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^(ARG CUDA_BASE=|FROM )nvidia/cuda:[\d.]+-(cudnn-)?runtime-", text, re.M)
    uv = re.search(r"uv==([\d.]+)", (REPO / "Makefile").read_text()).group(1)
    assert f"uv=={uv}" in text, "the image's uv must be the Makefile's"
    assert "-r requirements.lock" in text
    assert re.search(r"ARG TORCH_VERSION=(\S+)", text).group(1) == locked("torch")
    assert "--index-strategy unsafe-best-match" in text
    assert "--python 3.11" in text  # requires-python >=3.11,<3.12
    # anything beyond the lock goes in under it
    assert re.search(r"-c requirements\.lock prefect-kubernetes==", text)


# --- Prefect: GPU placement and a concurrency limit within the GPUs -----------------------

def test_base_job_template_places_flow_runs_on_gpu_nodes():
    template = base_job_template()
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == "{{ node_selector }}"
    assert pod["tolerations"] == "{{ tolerations }}"
    container = pod["containers"][0]
    assert container["resources"]["limits"][GPU] == "{{ gpu_count }}"
    variables = template["variables"]["properties"]
    assert any(t["key"] == GPU for t in variables["tolerations"]["default"])
    assert variables["node_selector"]["default"]
    # prefect-kubernetes refuses a job manifest that lacks these (worker.py, base manifest)
    assert (pod["parallelism"], pod["completions"], pod["restartPolicy"]) == (1, 1, "Never")
    assert container["name"] == "prefect-job"


def test_concurrency_limit_is_within_the_gpu_count():
    pool = work_pool()
    per_run = base_job_template()["variables"]["properties"]["gpu_count"]["default"]
    assert pool["concurrency_limit"] * per_run <= gpu_budget()
    worker = helm("prefect-worker")["worker"]["config"]
    assert worker["limit"] <= pool["concurrency_limit"]
    assert (K8S / "prefect" / pool["base_job_template"]).exists()


def test_worker_pool_and_deployments_name_the_same_pool():
    pool = work_pool()["name"]
    assert helm("prefect-worker")["worker"]["config"]["workPool"] == pool
    deployments = yaml.safe_load((K8S / "prefect" / "prefect.yaml").read_text())["deployments"]
    for dep in deployments:
        assert dep["work_pool"]["name"] == pool
        assert dep["work_pool"]["job_variables"].get("gpu_count", 1) * \
            work_pool()["concurrency_limit"] <= gpu_budget()


# --- the same S3 and PostgreSQL as the local stack ----------------------------------------

def test_helm_values_point_at_the_stack_services():
    env = config()
    mlflow = helm("mlflow")
    assert mlflow["artifactRoot"]["proxiedArtifactStorage"] is True
    assert mlflow["artifactRoot"]["s3"]["bucket"] == "mlflow-artifacts"
    assert mlflow["backendStore"]["postgres"]["enabled"] is True
    assert mlflow["backendStore"]["postgres"]["host"].split(".")[0] == "postgres"
    assert mlflow["extraEnvVars"]["MLFLOW_S3_ENDPOINT_URL"] == env["AWS_ENDPOINT_URL"]
    # MLFLOW_TRACKING_URI names the chart's Service
    host = re.match(r"https?://([^.:/]+)", env["MLFLOW_TRACKING_URI"]).group(1)
    assert host == mlflow["fullnameOverride"]
    worker = helm("prefect-worker")["worker"]
    assert worker["apiConfig"] == "selfHostedServer"
    assert worker["selfHostedServerApiConfig"]["apiUrl"] == env["PREFECT_API_URL"]
    services = {s["metadata"]["name"] for s in of_kind("Service")}
    for url in (env["AWS_ENDPOINT_URL"], env["PREFECT_API_URL"]):
        assert re.match(r"https?://([^.:/]+)", url).group(1) in services


def test_no_secret_is_committed():
    assert not of_kind("Secret"), "credentials are created by hand (infra/k8s/README.md)"
    for name in config():
        assert not re.search(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY", name), name
    text = "\n".join(p.read_text() for p in HELM.glob("*.yaml"))
    filled = r"(?i)\b(password|awsSecretAccessKey|awsAccessKeyId):\s*['\"]?[^'\"\s{]"
    assert not re.search(filled, text)
