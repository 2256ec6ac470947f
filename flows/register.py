"""Stage `register`: log the unlearned model to MLflow, register a new version of
`mlflow.model_name` and point the alias `candidate` at it. A reviewer promotes a candidate to
`champion` only after its audit passed.

It registers only the model the audit judged: models/unlearned.pt must hash to what
reports/audit.json and reports/finetune.json recorded (stages run out of order are refused),
and the certificate is written from the decoupling and retention records of that model. The
artifact's hash is a version tag (`artifact.sha256`) that `unlearn promote` checks again.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np

from components.certificate import make_certificate
from components.gate import provenance_problems
from components.models import ServingModel, model_from_file
from components.params import Params
from components.splits import file_sha256
from components.verdict import AUDITS
from flows.common import (
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
from flows.gate import ARTIFACT_TAG
from flows.tracking import client, log_figures, stage_run

SECTIONS = ("unlearn", "mlflow")
CANDIDATE = "candidate"
QUALITY = ("forget_psnr", "retain_psnr", "test_psnr", "forget_ssim", "retain_ssim", "test_ssim")


def version_tags(params: Params, metrics: dict, audit: dict, split_hash: str,
                 lock_hash: str, requests: list[str], certificate: dict) -> dict:
    """What a reviewer needs on the model version: flat figures for MLflow's UI and search,
    and JSON blocks (audit with its verdict, certificate, metrics) for `unlearn review`."""
    verdict = audit["verdict"]
    unlearned = audit["models"]["unlearned"]
    reference = audit["models"].get("retrained")  # None: audited reference-free
    return {
        "method": params.unlearn.method,
        "forget_split_hash": split_hash,
        "dvc_lock_hash": lock_hash,
        # the deletion requests this version has forgotten (all so far: the audit covers them)
        "requests": ",".join(requests),
        "audit.passed": str(verdict["passed"]).lower(),
        "audit.against": verdict["against"],
        **{f"audit.{k}": f"{unlearned[k]:.4f}" for k in AUDITS},
        **{f"reference.{k}": "none" if reference is None else f"{reference[k]:.4f}"
           for k in AUDITS},
        ARTIFACT_TAG: certificate["model_sha256"],
        **{f"certificate.{k}": "none" if certificate[k] is None else str(certificate[k])
           for k in ("epsilon", "delta", "covers", "mechanism")},
        "audit": json.dumps({**verdict, **{k: unlearned[k] for k in AUDITS},
                             "reference": None if reference is None else
                             {k: reference[k] for k in AUDITS},
                             "sha256": audit["sha256"]["unlearned"]}),
        "certificate": json.dumps(certificate),
        "metrics": json.dumps({"retrain_gap": metrics["retrain_gap"],
                               "cost_ratio": metrics["cost_ratio"],
                               **{k: metrics["unlearned"][k] for k in QUALITY}}),
    }


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
    certificate = make_certificate(decoupled, retained, summary["hashes"]["forget"], sha)
    tags = version_tags(params, metrics, audit, summary["hashes"]["forget"],
                        file_sha256(lock) if lock.exists() else "none",
                        summary.get("requests", []), certificate)
    name = params.mlflow.model_name
    run_tags = {k: v for k, v in tags.items() if k not in ("audit", "certificate", "metrics")}
    with stage_run("register", params, SECTIONS, run_tags) as run:
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
        client().set_registered_model_alias(name, CANDIDATE, version.version)
    registered = {"model_name": name, "version": int(version.version), "alias": CANDIDATE,
                  "model_uri": f"models:/{name}/{version.version}", "run_id": run.info.run_id}
    write_json(REPORT_DIR / "registered.json", registered)
    verdict = "PASSED" if audit["verdict"]["passed"] else \
        f"FAILED ({', '.join(audit['verdict']['failed'])})"
    gap = metrics["retrain_gap"]
    against = f"retrain gap {gap:.3f}" if gap is not None else "reference-free (no retrained model)"
    print(f"[register] {name} version {version.version} is now '{CANDIDATE}': audit {verdict}, "
          f"{against}, certificate: {certificate['covers']} "
          f"(ε = {certificate['epsilon']}). Review: unlearn review; promote: "
          f"unlearn promote --version {version.version}")
    return registered


if __name__ == "__main__":
    run_stage(register)
