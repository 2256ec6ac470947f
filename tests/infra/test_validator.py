"""The offline validator (tests/infra/validate.py, run by infra/check.sh) rejects what it must.

Broken copies of real manifests go to tmp_path; the validator has to refuse each, and its
command line has to exit non-zero, which is what makes `make check-infra` fail.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.infra import validate

REPO = Path(__file__).resolve().parents[2]
RAYJOB = REPO / "infra" / "k8s" / "rayjob-train.yaml"
needs_k8s_schemas = pytest.mark.skipif(
    importlib.util.find_spec("kubernetes_validate") is None,
    reason="kubernetes-validate is not installed (infra/check.sh installs it into .venv)")


def broken_rayjob(tmp_path: Path, edit) -> Path:
    job = yaml.safe_load(RAYJOB.read_text())
    edit(job["spec"])
    path = tmp_path / "rayjob-broken.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def test_real_rayjob_is_valid_against_the_vendored_crd():
    count, errors = validate.file_errors(RAYJOB)
    assert (count, errors) == (1, [])


def test_wrong_typed_rayjob_field_fails_the_command_line(tmp_path):
    path = broken_rayjob(tmp_path, lambda s: s.update(shutdownAfterJobFinishes="yes"))
    _, errors = validate.file_errors(path)
    assert errors == ["RayJob/i2i-unlearn-train at spec.shutdownAfterJobFinishes: "
                      "'yes' is not of type 'boolean'"]
    run = subprocess.run([sys.executable, "-m", "tests.infra.validate", str(path)],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "INVALID" in run.stdout


def test_misspelt_rayjob_field_is_rejected_not_pruned(tmp_path):
    # the API server would drop the unknown key silently and the cluster would never shut down
    def misspell(spec):
        spec["shutdownAfterJobFinish"] = spec.pop("shutdownAfterJobFinishes")

    _, errors = validate.file_errors(broken_rayjob(tmp_path, misspell))
    assert len(errors) == 1 and "'shutdownAfterJobFinish' was unexpected" in errors[0]


def test_bad_pod_template_inside_the_raycluster_spec_is_rejected(tmp_path):
    def bad_gpu(spec):
        worker = spec["rayClusterSpec"]["workerGroupSpecs"][0]
        worker["template"]["spec"]["tolerations"] = {"key": "nvidia.com/gpu"}  # not a list

    _, errors = validate.file_errors(broken_rayjob(tmp_path, bad_gpu))
    assert errors and "tolerations" in errors[0]


def test_helm_values_with_an_unknown_key_are_rejected(tmp_path):
    values = yaml.safe_load((REPO / "infra" / "helm" / "prefect-worker.values.yaml").read_text())
    broken = copy.deepcopy(values)
    broken["worker"]["config"]["workpool"] = broken["worker"]["config"].pop("workPool")
    path = tmp_path / "prefect-worker.values.yaml"
    path.write_text(yaml.safe_dump(broken))
    _, errors = validate.file_errors(path)
    assert errors and "'workpool' was unexpected" in errors[0]


@needs_k8s_schemas
def test_every_manifest_is_valid():
    failures = {p.name: e for p in validate.manifest_files() if (e := validate.file_errors(p)[1])}
    assert failures == {}


@needs_k8s_schemas
def test_base_job_template_with_an_undeclared_variable_or_bad_default_is_rejected(tmp_path):
    template = json.loads((REPO / "infra/k8s/prefect/base-job-template.json").read_text())
    broken = copy.deepcopy(template)
    pod = broken["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    pod["nodeSelector"] = "{{ node_selectr }}"
    broken["variables"]["properties"]["tolerations"]["default"] = [{"key": 1}]
    path = tmp_path / "base-job-template.json"
    path.write_text(json.dumps(broken))
    _, errors = validate.file_errors(path)
    assert any("node_selectr" in e for e in errors)
    assert any("tolerations.0.key" in e for e in errors)


@needs_k8s_schemas
def test_builtin_object_is_checked_strictly(tmp_path):
    path = tmp_path / "config.yaml"
    doc = yaml.safe_load((REPO / "infra/k8s/config.yaml").read_text())
    doc["data"]["RAY_USAGE_STATS_ENABLED"] = 0  # ConfigMap data must be strings
    doc["metadata"]["namespaec"] = "x"
    path.write_text(yaml.safe_dump(doc))
    _, errors = validate.file_errors(path)
    assert errors
