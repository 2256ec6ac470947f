"""A registry review that needs no code, read back through MlflowClient as MLflow's UI shows it:
the real `prepare` and `register` stages under one DVC process (a stand-in `dvc` that runs
them as `dvc repro` does), `unlearn report` and `unlearn promote`, on tiny digits files and a
real MLflow registry, without Ray.

The version carries a Markdown description and flat tags that answer the reviewer's
questions (method, audit and against what, certificate coverage, which data and requests,
where the report is, who promoted and why), the splits as datasets, and its runs nest under
one pipeline run named with the version; a version of another image shape under the derived
model name is refused.
"""

import json
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from components.params import AuditParams
from tests.flows.inprocess import review, unlearn
from tests.flows.test_gate import QUALITY, model_file, unlearning_outputs, write_json
from tests.flows.test_pipeline import run

NAME = "digits-ae"
# DVC runs a stage's command through a shell under its own process: so does this stand-in
FAKE_DVC = "#!/bin/sh\n/bin/sh -c \"$*\"\n"


def dvc(ws: Path, env: dict, *commands: str, code: int = 0) -> str:
    """Run `commands` one after another under one stand-in `dvc` process."""
    wrapper = ws.parent / "bin" / "dvc"
    wrapper.parent.mkdir(exist_ok=True)
    wrapper.write_text(FAKE_DVC)
    wrapper.chmod(0o755)
    return run([str(wrapper), " && ".join(commands)], ws, env, code=code)


def stage_outputs(ws: Path, seed: int, side: int = 8) -> str:
    """What train..evaluate leave for `register` and `unlearn report`; the model's sha256."""
    for name in ("original", "retrained"):
        model_file(ws, name, seed, side)
    unlearned = unlearning_outputs(ws, seed, AuditParams(), side)
    reports = ws / "reports"
    block = {**QUALITY, "trigger_psnr": 18.0, "retrain_gap": 0.01}
    write_json(reports / "metrics.json", {"retrain_gap": 0.01, "cost_ratio": 0.05,
                                          **{m: block for m in ("original", "unlearned",
                                                                "retrained")}})
    return unlearned


def test_a_version_answers_the_reviewer_from_mlflow_alone(registry_workspace):
    ws, env = registry_workspace
    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    sha = stage_outputs(ws, 0)
    out = dvc(ws, env, "python -m flows prepare", "python -m flows register")
    assert "digits-ae v1 is now 'candidate': class 3 (3) of digits" in out
    summary = json.loads((ws / "data/splits/summary.json").read_text())
    v1 = client.get_model_version(NAME, "1")
    tags = v1.tags

    # flat tags a reviewer filters on; the JSON blocks are an artifact now
    assert tags["method"] == "decouple"
    assert tags["method.variant"] == (  # TINY_PARAMS' differences from the defaults
        "decouple.max_steps=100, decouple.probe_size=256, finetune.steps=40, "
        "finetune.keep_decoupled=0.01, finetune.budget=null")

    assert (tags["audit.against"], tags["audit.passed"]) == ("retrained", "true")
    assert tags["audit.mia_auc"] == "0.5200" and tags["reference.mia_auc"] == "0.5000"
    assert tags["audit.mia_auc.rule"] == "ok: |0.520 - 0.500| <= 0.05"
    assert tags["certificate.covers"] == "none" and tags["certificate.epsilon"] == "inf"
    assert tags["forget.scope"] == "class 3 (3) of digits"
    assert tags["forget.count"] == str(summary["counts"]["forget"])
    assert tags["requests"] == "none"
    assert (tags["model.family"], tags["model.task"], tags["model.shape"]) == \
        ("ae", "reconstruction", "1x8x8")
    assert tags["artifact.sha256"] == sha
    assert not {"audit", "certificate", "metrics"} & tags.keys()
    artifacts = {a.path for a in client.list_artifacts(v1.run_id, "review")}
    assert artifacts == {"review/record.json"}

    # the description: method, scope, audit table, certificate, report, provenance, promotion
    text = v1.description
    assert text.startswith("## digits-ae v1: `decouple` unlearning of class 3 (3) of digits")
    assert f"{summary['counts']['forget']:,} training images" in text
    assert "**Deletion requests:** none" in text
    assert "### Audit: PASSED, against the retrained reference" in text
    assert "| backdoor_asr | 0.02 | retrained | 0 | 0.05 |" in text
    assert "### Certificate: covers nothing (ε = ∞)" in text
    assert "Not generated yet" in text and "Not promoted" in text
    assert "dvc.lock sha256" in text and "git commit" in text

    # which data: the forget and retain splits as the run's datasets
    inputs = client.get_run(v1.run_id).inputs.dataset_inputs
    datasets = {i.dataset.name: i.dataset for i in inputs}
    assert set(datasets) == {"digits-forget", "digits-retain"}
    forget = datasets["digits-forget"]
    assert forget.digest == summary["hashes"]["forget"][:12] and forget.source_type == "dvc"
    source = json.loads(forget.source)
    assert source["path"] == "data/splits/forget.csv"
    assert source["sha256"] == summary["hashes"]["forget"] and source["git_commit"]

    # one pipeline run, stage runs nested and named with the version, each with its params
    stages = client.search_runs([client.get_run(v1.run_id).info.experiment_id],
                                "tags.stage != 'pipeline'")
    parents = {r.data.tags.get("mlflow.parentRunId") for r in stages}
    assert len(stages) == 2 and len(parents) == 1 and None not in parents
    parent = client.get_run(parents.pop())
    assert parent.info.run_name.startswith("repro-")
    assert parent.info.run_name.endswith("-> digits-ae v1") and parent.info.status == "FINISHED"
    by_stage = {r.data.tags["stage"]: r for r in stages}
    assert by_stage["register"].info.run_name.endswith("/register (digits-ae v1)")
    assert "forget.classes" in by_stage["prepare"].data.params
    logged = by_stage["register"].data.params.keys()
    assert "unlearn.decouple.lr" in logged and "mlflow.model_name" in logged
    assert not any(k.startswith(("unlearn.salun", "data.", "forget.")) for k in logged)

    # the report: logged on the version's run, linked from the version, naming it
    unlearn(["report"], ws, env)
    page = (ws / "reports/report.html").read_text()
    assert "digits-ae version 1" in page and "class 3 (3) of digits" in page
    assert "covers none (ε = inf)" in page
    v1 = client.get_model_version(NAME, "1")
    assert v1.tags["report.uri"] == f"runs:/{v1.run_id}/report/report.html"
    assert [a.path for a in client.list_artifacts(v1.run_id, "report")] == ["report/report.html"]
    assert f"[report.html](#/experiments/{parent.info.experiment_id}/runs/{v1.run_id}/" \
           "artifacts/report/report.html)" in v1.description

    # promotion: a person, recorded on the version; candidate leaves it
    env.pop("UNLEARN_REVIEWER", None)
    out = unlearn(["promote", "--version", "1", "--yes"], ws, env, code=2)
    assert "say who promotes: --by NAME or UNLEARN_REVIEWER=NAME" in out
    unlearn(["promote", "--version", "1", "--yes"], ws, {**env, "UNLEARN_REVIEWER": "Ada Lovelace"})
    v1 = client.get_model_version(NAME, "1")
    assert (v1.tags["promoted.by"], v1.tags["promoted.reason"], v1.tags["promoted.forced"]) == \
        ("Ada Lovelace", "audit passed", "false")
    assert "Promoted to `champion` by **Ada Lovelace**" in v1.description
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias(NAME, "candidate")
    after = review(ws, env)
    assert after["candidate"] is None and after["champion"]["gate"]["ok"]
    assert after["champion"]["promoted"]["by"] == "Ada Lovelace"
    assert after["champion"]["forget_scope"] == "class 3 (3) of digits"
    assert after["champion"]["audit"]["passed"] is True  # read from review/record.json
    assert after["champion"]["certificate"]["covers"] == "none"

    # MLflow's own alias controls bypass the gate: review still flags it
    stage_outputs(ws, 1)
    dvc(ws, env, "python -m flows register")
    client.set_registered_model_alias(NAME, "champion", "2")
    flagged = review(ws, env)["champion"]
    assert flagged["version"] == 2 and "outside `unlearn promote`" in \
        flagged["gate"]["problems"][0]


def test_the_derived_name_refuses_another_model_line(registry_workspace):
    ws, env = registry_workspace
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["mlflow"]["model_name"] = None
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    stage_outputs(ws, 0)
    run(["python", "-m", "flows", "prepare"], ws, env)
    run(["python", "-m", "flows", "register"], ws, env)  # alone: no parent run
    assert client.get_model_version("digits-ae", "1").tags["model.shape"] == "1x8x8"
    stage_outputs(ws, 1, side=16)
    out = run(["python", "-m", "flows", "register"], ws, env, code=2)
    assert "refusing to register this ae/reconstruction 1x16x16 model as a version of " \
           "'digits-ae', which holds another model line (shape 1x8x8 (v1) vs 1x16x16)" in out
    assert len(client.search_model_versions("name='digits-ae'")) == 1
    params["mlflow"]["model_name"] = "digits-ae"  # named: the user's call
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["python", "-m", "flows", "register"], ws, env)
    assert client.get_model_version("digits-ae", "2").tags["model.shape"] == "1x16x16"
