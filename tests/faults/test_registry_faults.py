"""Registry faults on a real MLflow server: promotions racing each other and a registration,
and the server going down at register time."""

import json
import subprocess

import pytest
from mlflow import MlflowClient

from tests.flows.test_pipeline import run

pytestmark = pytest.mark.faults
REGISTER = """
import json, sys, mlflow
from mlflow import MlflowClient
mlflow.set_experiment("race")
with mlflow.start_run() as r:
    mlflow.log_text("weights", "model/weights.txt")
for audit in sys.argv[1:]:
    tags = {} if audit == "none" else {"audit": json.dumps(
        {"passed": audit == "pass", "failed": [] if audit == "pass" else ["mia_auc"],
         "checks": {"mia_auc": {"passed": audit == "pass", "rule": "0.7 <= 0.55"}}})}
    v = MlflowClient().create_model_version("digits-ae", f"runs:/{r.info.run_id}/model",
                                            r.info.run_id, tags=tags)
    print(v.version)
"""


def test_racing_promotions_end_on_an_audited_version_and_log_every_one(workspace,
                                                                       mlflow_server):
    ws, env = workspace
    env = {**env, "MLFLOW_TRACKING_URI": mlflow_server.url}
    client = MlflowClient(mlflow_server.url)
    client.create_registered_model("digits-ae")
    run(["python", "-c", REGISTER, "pass", "fail", "pass"], ws, env)  # v1, v2, v3
    # all at once: three promotions and a registration of v4, which carries no audit
    procs = {f"promote {v}": subprocess.Popen(
        ["unlearn", "promote", "--version", str(v), "--yes", "--by", f"reviewer{v}"], cwd=ws,
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for v in (1, 2, 3)}
    procs["register 4"] = subprocess.Popen(["python", "-c", REGISTER, "none"], cwd=ws, env=env,
                                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                           text=True)
    procs["promote 4"] = subprocess.Popen(
        ["unlearn", "promote", "--version", "4", "--yes", "--force"], cwd=ws, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    outs = {k: (p.wait(300), p.stdout.read()) for k, p in procs.items()}
    assert outs["promote 1"][0] == outs["promote 3"][0] == outs["register 4"][0] == 0, outs
    assert outs["promote 2"][0] == 1 and "failed its audit" in outs["promote 2"][1]
    assert outs["promote 4"][0] == 2 and "Traceback" not in outs["promote 4"][1]
    champion = client.get_model_version_by_alias("digits-ae", "champion")
    assert champion.version in ("1", "3")
    assert json.loads(champion.tags["audit"])["passed"] is True
    log = [json.loads(v) for k, v in client.get_registered_model("digits-ae").tags.items()
           if k.startswith("promotion.")]
    assert sorted(e["to"] for e in log) == [1, 3], log  # neither entry overwrote the other
    assert all(e["by"].startswith("reviewer") and e["reason"] for e in log)


def test_mlflow_down_at_register_time_fails_clearly_and_moves_no_alias(workspace,
                                                                      mlflow_server):
    ws, env = workspace
    env = {**env, "MLFLOW_TRACKING_URI": mlflow_server.url,
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
           "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    run(["dvc", "repro"], ws, env)
    client = MlflowClient(mlflow_server.url)
    assert client.get_model_version_by_alias("digits-ae", "candidate").version == "1"
    mlflow_server.kill()
    proc = subprocess.run(["python", "-m", "flows.register"], cwd=ws, env=env,
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert f"MLflow unreachable at {mlflow_server.url} after retries" in proc.stderr
    assert "Retrying" in out and "Traceback" not in out
    mlflow_server.start()  # its SQLite store kept everything
    versions = client.search_model_versions("name='digits-ae'")
    assert [v.version for v in versions] == ["1"]
    assert client.get_model_version_by_alias("digits-ae", "candidate").version == "1"
