"""Registry faults on a real MLflow server: promotions racing each other and a registration,
and the server going down at register time."""

import json
import subprocess

import pytest
from mlflow import MlflowClient

from tests.flows.test_pipeline import run

pytestmark = pytest.mark.faults
# versions as `register` makes them (a checkpoint artifact, its hash, the audit that judged
# it), so that the gate can vouch for the passing ones; "none": a version without an audit
REGISTER = """
import hashlib, json, sys, mlflow
from mlflow import MlflowClient
from components.params import AuditParams
from components.verdict import audit_verdict
REFERENCE = {"backdoor_asr": 0.0, "mia_auc": 0.5, "mia_efficacy": 0.4, "ood_auroc": 0.66,
             "trigger_psnr": 19.0}
mlflow.set_experiment("race")
for audit in sys.argv[1:]:
    tags = {}
    with mlflow.start_run() as r:
        if audit != "none":
            figures = {**REFERENCE, "mia_auc": 0.52 if audit == "pass" else 0.7}
            verdict = audit_verdict(figures, REFERENCE, AuditParams())
            weights = f"weights of run {r.info.run_id}"
            sha = hashlib.sha256(weights.encode()).hexdigest()
            mlflow.log_text(weights, "checkpoint/unlearned.pt")
            mlflow.log_dict({"models": {"unlearned": figures, "retrained": REFERENCE},
                             "verdict": verdict, "sha256": {"unlearned": sha},
                             "audit_params": AuditParams().model_dump(mode="json")},
                            "reports/audit.json")
            tags = {"audit": json.dumps({**verdict, **figures}), "artifact.sha256": sha,
                    "audit.passed": str(verdict["passed"]).lower()}
    v = MlflowClient().create_model_version("digits-ae", f"runs:/{r.info.run_id}/checkpoint",
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
    # all at once: three promotions and a registration of v4, which carries no audit; a
    # forced promotion of v4, with its reason, as soon as v4 exists (the others still racing)
    def start(*cmd):
        return subprocess.Popen(cmd, cwd=ws, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    procs = {f"promote {v}": start("unlearn", "promote", "--version", str(v), "--yes", "--by",
                                   f"reviewer{v}") for v in (1, 2, 3)}
    procs["register 4"] = start("python", "-c", REGISTER, "none")
    procs["register 4"].wait(300)
    procs["promote 4"] = start("unlearn", "promote", "--version", "4", "--yes", "--force",
                               "--reason", "race drill", "--by", "reviewer4")
    outs = {k: (p.wait(300), p.stdout.read()) for k, p in procs.items()}
    assert outs["promote 1"][0] == outs["promote 3"][0] == outs["register 4"][0] == 0, outs
    assert outs["promote 2"][0] == 1 and "failed its audit" in outs["promote 2"][1]
    # refused for what it is, not for a missing --reason: no override promotes an unaudited one
    assert outs["promote 4"][0] == 2, outs["promote 4"]
    assert "version 4 carries no audit" in outs["promote 4"][1]
    assert "Traceback" not in outs["promote 4"][1]
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
