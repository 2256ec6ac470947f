"""The whole pipeline on a tiny digits config, for real: `dvc repro` runs every stage as a
Prefect flow (session Prefect server), Ray Train jobs (session Ray cluster) and MLflow (SQLite
in the workspace). 7.6 minutes on 2 cores (a clean-clone `make test`, November 2026): eight
stage processes, each starting Prefect and a Ray Train job, then four more for the `dvc exp run`.
"""

import json
import math
import subprocess

import yaml
from mlflow.tracking import MlflowClient

from tests.flows import inprocess

STAGES = ("prepare", "train", "decouple", "finetune", "audit", "evaluate", "register")
BLOCK_KEYS = {"forget_psnr", "retain_psnr", "test_psnr", "forget_ssim", "mia_auc", "ood_auroc",
              "backdoor_asr", "retrain_gap"}


def run(cmd, ws, env, timeout=900, code=0):
    proc = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == code, \
        f"{cmd} exited {proc.returncode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


def review(ws, env):
    return json.loads(run(["unlearn", "review", "--json"], ws, env))


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
    assert {r.data.tags["stage"] for r in runs} >= {"prepare", "train-original",
                                                     "train-retrained", "decouple", "finetune",
                                                     "audit", "evaluate", "register"}
    # one parent run for the repro, every stage run under it, named with the version
    parent = next(r for r in runs if r.data.tags["stage"] == "pipeline")
    assert parent.info.run_name.endswith("-> digits-ae v1")
    assert all(r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
               for r in runs if r.data.tags["stage"] != "pipeline")
    ascent = next(r for r in runs if r.data.tags["stage"] == "decouple")
    assert "forget_loss" in client.get_metric_history(ascent.info.run_id, "forget_loss")[0].key

    # a second repro is a no-op
    out = run(["dvc", "repro"], ws, env)
    assert "Data and pipelines are up to date" in out and "Running stage" not in out
    assert "up to date" in run(["dvc", "status"], ws, env)

    # the reviewer's view: candidate v1 with its audit against the retrained reference
    first = review(ws, env)
    assert first["candidate"]["version"] == 1 and first["champion"] is None
    audit = first["candidate"]["audit"]
    assert audit["passed"] is True, audit
    assert {"backdoor_asr", "mia_auc", "mia_efficacy", "ood_auroc"} <= audit.keys()
    assert audit["reference"]["backdoor_asr"] == metrics["retrained"]["backdoor_asr"]
    assert first["candidate"]["certificate"]["epsilon"] == "inf"
    assert first["candidate"]["certificate"]["covers"] == "none"
    assert first["candidate"]["artifact_sha256"] == version.tags["artifact.sha256"]
    assert first["candidate"]["gate"]["ok"]
    run(["unlearn", "promote", "--version", "1", "--yes", "--by", "ci"], ws, env)
    # the reviewer commands as real processes: review, promote (exit 0 above; 1 and 2 below),
    # report; their repeats in-process (tests/flows/inprocess.py: the same app, ~6 s less each)
    assert inprocess.review(ws, env)["champion"]["version"] == 1

    # the report: one self-contained page, images embedded, logged to MLflow
    run(["unlearn", "report"], ws, env)
    page = (ws / "reports/report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 * 4 + 1  # 3 grids x (input + 3 models)
    assert "Verdict: <span class='pass'>PASS</span>" in page and "src=\"http" not in page
    assert "No (ε, δ) bound is claimed for models/unlearned.pt" in page
    assert "digits-ae version 1" in page  # the page names the version it is about ...
    champion = client.get_model_version("digits-ae", "1")  # ... which links to the page
    assert champion.tags["report.uri"] == f"runs:/{champion.run_id}/report/report.html"
    assert client.list_artifacts(champion.run_id, "report")[0].path == "report/report.html"

    # -S overrides, the DVC way: the same class list changes nothing upstream; retention that
    # no longer keeps the forget set decoupled (the literal reading) reruns retention onwards
    # only, never the training or the decoupling, and brings the backdoor back
    out = run(["dvc", "exp", "run", "-S", "forget.classes=[3]",
               "-S", "unlearn.finetune.keep_decoupled=0"], ws, env)
    ran = {s for s in STAGES if f"Running stage '{s}'" in out}
    assert ran == {"finetune", "audit", "evaluate", "register"}, out[-3000:]
    # only the unlearned model changed: the others' figures and the judge are kept
    assert "[evaluate] scored unlearned; kept the figures of original, decoupled, retrained " \
           "(unchanged files); kept the domain classifier" in out
    params = yaml.safe_load((ws / "params.yaml").read_text())
    assert params["forget"]["classes"] == [3]
    assert params["unlearn"]["finetune"]["keep_decoupled"] == 0
    second = inprocess.review(ws, env)
    assert second["candidate"]["version"] == 2 and not second["candidate"]["audit"]["passed"]
    assert "backdoor_asr" in second["candidate"]["audit"]["failed"]

    # the gate: a failed audit is refused with its figures, the champion stays where it was
    out = run(["unlearn", "promote", "--version", "2", "--yes"], ws, env, code=1)
    assert "failed its audit" in out and "backdoor_asr" in out and "Traceback" not in out
    assert "--force needs --reason" in run(["unlearn", "promote", "--version", "2", "--yes",
                                            "--force"], ws, env, code=2)
    assert "does not exist" in inprocess.unlearn(["promote", "--version", "9", "--yes"], ws, env,
                                                 code=2)
    assert inprocess.review(ws, env)["champion"]["version"] == 1
    inprocess.unlearn(["promote", "--version", "2", "--yes", "--force", "--reason", "drill",
                       "--by", "ci"], ws, env)
    final = inprocess.review(ws, env)
    assert final["champion"]["version"] == 2
    assert [(p["from"], p["to"], p["forced"], p["by"]) for p in final["promotions"]] == \
        [(None, 1, False, "ci"), (1, 2, True, "ci")]
    assert final["promotions"][1]["reason"] == "drill"
