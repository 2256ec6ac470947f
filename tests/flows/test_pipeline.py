"""The whole pipeline on a tiny digits config, for real: `dvc repro` runs every stage as a
Prefect flow (session Prefect server), Ray Train jobs (session Ray cluster) and MLflow (SQLite
in the workspace). About 3-4 minutes on 2 cores.
"""

import json
import math
import subprocess

import yaml
from mlflow.tracking import MlflowClient

STAGES = ("prepare", "train", "decouple", "finetune", "audit", "evaluate", "register")
BLOCK_KEYS = {"forget_psnr", "retain_psnr", "test_psnr", "forget_ssim", "mia_auc", "ood_auroc",
              "backdoor_asr", "retrain_gap"}


def run(cmd, ws, env, timeout=900):
    proc = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


def test_pipeline_end_to_end_then_noop_then_retune(workspace):
    ws, env = workspace
    out = run(["dvc", "repro"], ws, env)
    for stage in STAGES:
        assert f"Running stage '{stage}'" in out

    # splits: DVC-tracked manifests, forget = exactly the requested class
    summary = json.loads((ws / "data/splits/summary.json").read_text())
    assert summary["forget_classes"] == ["3"] and summary["poisoned"] > 0
    forget_rows = (ws / "data/splits/forget.csv").read_text().splitlines()[1:]
    assert len(forget_rows) == summary["counts"]["forget"]
    assert {r.split(",")[1] for r in forget_rows} == {"3"}

    # metrics: the contract of reports/metrics.json
    metrics = json.loads((ws / "reports/metrics.json").read_text())
    for block in ("original", "unlearned", "retrained"):
        assert metrics[block].keys() >= BLOCK_KEYS
        assert all(math.isfinite(v) for v in metrics[block].values())
    assert metrics["retrain_gap"] == metrics["unlearned"]["retrain_gap"]
    assert metrics["retrained"]["retrain_gap"] == 0.0
    assert 0 < metrics["cost_ratio"] < 10
    # the trigger was learned by the original and never by the retrained model
    assert metrics["original"]["backdoor_asr"] > 0.5 > metrics["retrained"]["backdoor_asr"]
    decoupled = json.loads((ws / "reports/decouple.json").read_text())
    assert decoupled["method"] == "decouple" and decoupled["lambda"] > 0

    # registry: a new version with alias `candidate` and the promised tags
    registered = json.loads((ws / "reports/registered.json").read_text())
    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    version = client.get_model_version_by_alias("digits-ae", "candidate")
    assert int(version.version) == registered["version"] == 1
    assert version.tags["method"] == "decouple"
    assert version.tags["forget_split_hash"] == summary["hashes"]["forget"]
    assert {"dvc_lock_hash", "audit.backdoor_asr", "reference.backdoor_asr"} <= version.tags.keys()
    runs = client.search_runs([client.get_experiment_by_name("test-pipeline").experiment_id])
    assert {r.info.run_name for r in runs} >= {"prepare", "train-original", "train-retrained",
                                                "decouple", "finetune", "audit", "evaluate",
                                                "register"}
    ascent = next(r for r in runs if r.info.run_name == "decouple")
    assert "forget_loss" in client.get_metric_history(ascent.info.run_id, "forget_loss")[0].key

    # a second repro is a no-op
    out = run(["dvc", "repro"], ws, env)
    assert "Data and pipelines are up to date" in out and "Running stage" not in out
    assert "up to date" in run(["dvc", "status"], ws, env)

    # -S overrides, the DVC way: the same class list changes nothing upstream, a new
    # retention budget reruns retention onwards only, never the training or the decoupling
    out = run(["dvc", "exp", "run", "-S", "forget.classes=[3]",
               "-S", "unlearn.finetune.steps=20"], ws, env)
    ran = {s for s in STAGES if f"Running stage '{s}'" in out}
    assert ran == {"finetune", "audit", "evaluate", "register"}, out[-3000:]
    params = yaml.safe_load((ws / "params.yaml").read_text())
    assert params["forget"]["classes"] == [3] and params["unlearn"]["finetune"]["steps"] == 20
    assert int(client.get_model_version_by_alias("digits-ae", "candidate").version) == 2
