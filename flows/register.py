"""Stage `register`: log the unlearned model to MLflow, register a new version of
the registered model and point the alias `candidate` at it. A reviewer promotes a candidate to
`champion` only after its audit passed.

It registers only the model the audit judged: models/unlearned.pt must hash to what
reports/audit.json and reports/finetune.json recorded (stages run out of order are refused),
and the certificate is written from the decoupling and retention records of that model. The
artifact's hash is a version tag (`artifact.sha256`) that `unlearn promote` checks again.

What a reviewer reads without code: a Markdown description (components/review.py), flat
tags (audit figures and rules, forget scope, certificate coverage), the forget and retain
splits as the run's datasets, and the review/record.json artifact behind `unlearn review`.
The registered model is `mlflow.model_name`, or one derived per model line (dataset, family,
task); a version of another family, task or image shape than the derived name's existing
versions is refused unless the name is set explicitly.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np

from components.certificate import make_certificate
from components.gate import provenance_problems
from components.methods import get_method
from components.models import ServingModel, model_from_file
from components.params import Params, registered_model_name
from components.review import (
    audit_tags,
    forget_scope,
    method_keys,
    method_variant,
    requests_tag,
)
from components.splits import file_sha256
from components.verdict import AUDITS
from flows.ops.gate import ARTIFACT_TAG
from flows.ops.review import RECORD_ARTIFACT, refresh_description
from flows.runtime.common import (
    MODEL_DIR,
    REPORT_DIR,
    SPLIT_DIR,
    StageError,
    read_json,
    read_model_file,
    run_stage,
    stage_flow,
    stage_params,
    write_json,
)
from flows.runtime.tracking import (
    PIPELINE_TAG,
    client,
    end_pipeline_run,
    git_commit,
    log_figures,
    name_pipeline_runs,
    parent_of,
    splits_md5,
    stage_run,
)

CANDIDATE = "candidate"
QUALITY = ("forget_psnr", "retain_psnr", "test_psnr", "forget_ssim", "retain_ssim", "test_ssim")
LINE_TAGS = ("model.family", "model.task", "model.shape")  # what one registered model holds


def version_tags(params: Params, audit: dict, summary: dict, lock_hash: str,
                 certificate: dict, line: dict[str, str], variant: str, scope: str) -> dict:
    """Flat tags a reviewer reads and filters on in MLflow's UI and search: method and
    variant, forget scope, one tag per audit figure, reference and rule, the certificate's
    coverage, hashes. The JSON blocks `unlearn review` reads are the review/record.json
    artifact (flows/ops/review.py)."""
    verdict = audit["verdict"]
    unlearned = audit["models"]["unlearned"]
    reference = audit["models"].get("retrained")  # None: audited reference-free
    return {
        "method": params.unlearn.method,
        "method.variant": variant,
        "forget.scope": scope,
        "forget.count": str(summary["counts"]["forget"]),
        "forget_split_hash": summary["hashes"]["forget"],
        "dvc_lock_hash": lock_hash,
        # the deletion requests this version has forgotten (all so far: the audit covers them)
        "requests": requests_tag(summary.get("requests", [])),
        "audit.passed": str(verdict["passed"]).lower(),
        "audit.against": verdict["against"],
        **{f"audit.{k}": f"{unlearned[k]:.4f}" for k in AUDITS},
        **audit_tags(verdict),
        **{f"reference.{k}": "none" if reference is None else f"{reference[k]:.4f}"
           for k in AUDITS},
        ARTIFACT_TAG: certificate["model_sha256"],
        **{f"certificate.{k}": "none" if certificate[k] is None else str(certificate[k])
           for k in ("epsilon", "delta", "covers", "mechanism")},
        **line,
    }


def review_record(params: Params, metrics: dict, audit: dict, summary: dict,
                  certificate: dict, provenance: dict, line: dict[str, str],
                  variant: str, scope: str) -> dict:
    """The version's review/record.json: what `unlearn review` and the description read
    (the `audit`, `certificate` and `metrics` blocks were JSON tags before)."""
    verdict, unlearned = audit["verdict"], audit["models"]["unlearned"]
    reference = audit["models"].get("retrained")
    return {
        "model_name": registered_model_name(params), "method": params.unlearn.method,
        "variant": variant,
        "model": {k.removeprefix("model."): v for k, v in line.items()},
        "scope": {"text": scope, "dataset": summary.get("dataset"),
                  "kind": params.forget.kind, "classes": params.forget.classes,
                  "counts": summary["counts"], "poisoned": summary.get("poisoned", 0),
                  "requests": summary.get("requests", []),
                  "forget_split_hash": summary["hashes"]["forget"],
                  "retain_split_hash": summary["hashes"]["retain"],
                  "splits_md5": splits_md5()},
        "audit": {**verdict, **{k: unlearned[k] for k in AUDITS},
                  "reference": None if reference is None else {k: reference[k] for k in AUDITS},
                  "sha256": audit["sha256"]["unlearned"]},
        "certificate": certificate,
        "metrics": {"retrain_gap": metrics["retrain_gap"], "cost_ratio": metrics["cost_ratio"],
                    **{k: metrics["unlearned"][k] for k in QUALITY}},
        "provenance": provenance,
    }


def line_problems(name: str, line: dict[str, str]) -> list[str]:
    """Versions of `name` that hold another model line (family, task or image shape) than
    `line`; versions registered before these tags existed are not compared."""
    problems = []
    for v in client().search_model_versions(f"name='{name}'"):
        theirs = {k: v.tags[k] for k in LINE_TAGS if k in v.tags}
        differ = [f"{k.removeprefix('model.')} {theirs[k]} (v{v.version}) vs {line[k]}"
                  for k in theirs if theirs[k] != line[k]]
        if differ:
            problems.append(", ".join(differ))
    return problems


@stage_flow("register")
def register() -> dict:
    params = stage_params()
    metrics = read_json(REPORT_DIR / "metrics.json")
    blob = read_model_file(MODEL_DIR / "unlearned.pt")
    model = model_from_file(blob)
    c, side = blob["shape"]
    summary = read_json(SPLIT_DIR / "summary.json")
    lock = Path("dvc.lock")
    audit = read_json(REPORT_DIR / "audit.json")
    decoupled, retained = read_json(REPORT_DIR / "decouple.json"), \
        read_json(REPORT_DIR / "finetune.json")
    sha = file_sha256(MODEL_DIR / "unlearned.pt")
    problems = provenance_problems(sha, audit, decoupled, retained)
    if problems:
        raise StageError(f"refusing to register: {problems[0]}")
    name = registered_model_name(params)
    line = {"model.family": blob["model"]["family"], "model.task": blob["model"]["task"],
            "model.shape": f"{c}x{side}x{side}"}
    other = line_problems(name, line)
    if other and params.mlflow.model_name is None:
        raise StageError(f"refusing to register this {line['model.family']}/"
                         f"{line['model.task']} {line['model.shape']} model as a version of "
                         f"'{name}', which holds "
                         f"another model line ({other[0]}): set mlflow.model_name to register "
                         "it there anyway, or to a new name")
    certificate = make_certificate(decoupled, retained, summary["hashes"]["forget"], sha)
    retention = get_method(params.unlearn.method).retention
    variant = method_variant(params, retention)
    scope = forget_scope(summary, params)
    lock_hash = file_sha256(lock) if lock.exists() else "none"
    tags = version_tags(params, audit, summary, lock_hash, certificate, line, variant, scope)
    keys = (*method_keys(params.unlearn.method, retention), "mlflow")
    with stage_run("register", params, keys, {**tags, "git.commit": git_commit() or "none"},
                   splits=summary) as run:
        log_figures("", {k: metrics[k] for k in ("retrain_gap", "cost_ratio")})
        log_figures("unlearned", metrics["unlearned"])
        for report in ("metrics.json", "audit.json", "decouple.json", "finetune.json"):
            mlflow.log_artifact(str(REPORT_DIR / report), "reports")
        # the plain weights file: a later cycle starts from it (flows/start.py), loaded with
        # torch.load(weights_only=True), never by unpickling code
        mlflow.log_artifact(str(MODEL_DIR / "unlearned.pt"), "checkpoint")
        # pinning the requirement skips MLflow's inference (16 s -> 5 s, measured)
        # MLflow 3 saves a torch.export (pt2) program, not a pickle; it needs an example input,
        # of batch 2: torch.export would specialise a batch of 1 into the program
        example = np.zeros((2, c, side, side), np.float32)
        info = mlflow.pytorch.log_model(ServingModel(model), name="model",
                                        input_example=example, pip_requirements=["torch==2.13.0"])
        version = mlflow.register_model(info.model_uri, name, tags=tags)
        provenance = {"git_commit": git_commit(), "dvc_lock_hash": lock_hash,
                      "artifact_sha256": sha, "run_id": run.info.run_id,
                      "experiment_id": run.info.experiment_id,
                      "pipeline": run.data.tags.get(PIPELINE_TAG)}
        record = review_record(params, metrics, audit, summary, certificate, provenance, line,
                               variant, scope)
        mlflow.log_dict({**record, "version": int(version.version)}, RECORD_ARTIFACT)
        client().set_registered_model_alias(name, CANDIDATE, version.version)
    refresh_description(name, int(version.version))
    label = f"{name} v{version.version}"
    name_pipeline_runs(run.info.run_id, label)
    parent = parent_of(run.info.run_id)
    if parent is not None and parent[1] == "dvc":  # a cycle ends its own run
        end_pipeline_run(parent[0])
    registered = {"model_name": name, "version": int(version.version), "alias": CANDIDATE,
                  "model_uri": f"models:/{name}/{version.version}", "run_id": run.info.run_id}
    write_json(REPORT_DIR / "registered.json", registered)
    verdict = "PASSED" if audit["verdict"]["passed"] else \
        f"FAILED ({', '.join(audit['verdict']['failed'])})"
    gap = metrics["retrain_gap"]
    against = f"retrain gap {gap:.3f}" if gap is not None else "reference-free (no retrained model)"
    print(f"[register] {label} is now '{CANDIDATE}': {scope}, audit {verdict}, "
          f"{against}, certificate: {certificate['covers']} "
          f"(ε = {certificate['epsilon']}). Review: unlearn review (or its description in "
          f"MLflow); promote: unlearn promote --version {version.version} --by <you>")
    return registered


if __name__ == "__main__":
    run_stage(register)
