"""The promotion gate on a real MLflow registry, without the 8-minute pipeline and without
Ray: the stages' outputs are written here (tiny model files and the reports the stages
write), and the real `register` stage, `unlearn promote`, `unlearn review` and `unlearn run`
act on them.

Out-of-order stages are refused at register time; a version audited under looser
tolerances than the committed policy needs --force --reason; a champion moved with
MlflowClient is flagged by review and refused by the cycle; an edited tag or a replaced
artifact cannot be promoted, not even with --force.
"""

import json
import shutil
from pathlib import Path
from urllib.parse import urlparse

import torch
from mlflow.tracking import MlflowClient

from components.ledger import add_request
from components.models import build_model
from components.params import AuditParams, load_params
from components.splits import file_sha256
from components.verdict import audit_verdict
from flows.runtime.common import save_model
from tests.conftest import REPO
from tests.flows.inprocess import review, unlearn
from tests.flows.test_pipeline import run

NAME = "digits-ae"
REFERENCE = {"backdoor_asr": 0.0, "trigger_psnr": 19.0, "mia_auc": 0.50, "mia_efficacy": 0.40,
             "ood_auroc": 0.66}
FIGURES = {"backdoor_asr": 0.02, "trigger_psnr": 18.5, "mia_auc": 0.52, "mia_efficacy": 0.45,
           "ood_auroc": 0.60}
# what `prepare` writes for the tiny digits params (class 3 forgotten)
SUMMARY = {"dataset": "digits", "counts": {"forget": 160, "retain": 1400, "heldout": 157,
                                           "test": 360},
           "poisoned": 80, "forget_classes": ["3"], "requests": [],
           "hashes": {"forget": "f" * 64, "retain": "e" * 64, "heldout": "d" * 64,
                      "test": "c" * 64}}
QUALITY = {k: 20.0 for k in ("forget_psnr", "retain_psnr", "test_psnr")} | \
    {k: 0.8 for k in ("forget_ssim", "retain_ssim", "test_ssim")}


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def model_file(ws: Path, name: str, seed: int, side: int = 8) -> str:
    params = load_params(ws / "params.yaml")
    torch.manual_seed(seed)
    model = build_model(params.model, 1, side)
    save_model(ws / "models" / f"{name}.pt", model.state_dict(), params, (1, side),
               {"seed": seed})
    return file_sha256(ws / "models" / f"{name}.pt")


def unlearning_outputs(ws: Path, seed: int, audit: AuditParams, side: int = 8) -> str:
    """The decoupled and unlearned models drawn from `seed` and the decouple, finetune and
    audit records `register` checks them against (judged under `audit`); the model's sha256."""
    decoupled = model_file(ws, "decoupled", seed, side)
    unlearned = model_file(ws, "unlearned", seed, side)
    reports = ws / "reports"
    write_json(reports / "decouple.json", {"method": "decouple", "steps": 3,
                                           "model_sha256": decoupled})
    write_json(reports / "finetune.json", {"method": "decouple", "steps": 5,
                                           "reads": ["retain", "forget"],
                                           "init_sha256": decoupled, "model_sha256": unlearned})
    write_json(reports / "audit.json", {
        "models": {"unlearned": FIGURES, "retrained": REFERENCE},
        "verdict": audit_verdict(FIGURES, REFERENCE, audit),
        "sha256": {"unlearned": unlearned}, "audit_params": audit.model_dump(mode="json")})
    return unlearned


def stage_outputs(ws: Path, seed: int, audit: AuditParams) -> str:
    """What prepare..evaluate leave behind for `register`, for a model drawn from `seed`,
    judged under `audit`; returns the model's sha256."""
    unlearned = unlearning_outputs(ws, seed, audit)
    write_json(ws / "reports/metrics.json", {"retrain_gap": 0.01, "cost_ratio": 0.05,
                                             "unlearned": QUALITY})
    write_json(ws / "data/splits/summary.json", SUMMARY)
    return unlearned


def test_gate_refuses_out_of_order_loose_moved_and_edited_versions(registry_workspace):
    ws, env = registry_workspace
    shutil.copy(REPO / "policy.yaml", ws / "policy.yaml")  # the committed policy, not TINY's
    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")

    # stages out of order: finetune ran again after the audit; register refuses, registers
    # nothing
    stage_outputs(ws, 0, AuditParams())
    model_file(ws, "unlearned", 1)
    out = run(["python", "-m", "flows", "register"], ws, env, code=2)
    assert "refusing to register: models/unlearned.pt (sha256" in out
    assert "is not the model reports/audit.json judged" in out and "Traceback" not in out
    assert client.search_model_versions(f"name='{NAME}'") == []

    # in order: v1 under the policy's tolerances, v2 under looser ones
    sha1 = stage_outputs(ws, 0, AuditParams())
    run(["python", "-m", "flows", "register"], ws, env)
    loose = AuditParams.model_validate({"tolerance": {"mia_auc": 0.3}})
    sha2 = stage_outputs(ws, 1, loose)
    run(["python", "-m", "flows", "register"], ws, env)
    v1, v2 = (client.get_model_version(NAME, v) for v in ("1", "2"))
    assert (v1.tags["artifact.sha256"], v2.tags["artifact.sha256"]) == (sha1, sha2)
    assert v1.tags["certificate.covers"] == "none" and v1.tags["certificate.epsilon"] == "inf"

    unlearn(["promote", "--version", "1", "--yes", "--by", "ci"], ws, env)
    first = review(ws, env)
    assert first["champion"]["gate"] == {"ok": True, "problems": []}
    assert first["champion"]["artifact_sha256"] == sha1
    assert first["candidate"]["certificate"]["covers"] == "none"

    # the alias moved outside the gate: review flags it, the cycle will not start from it
    client.set_registered_model_alias(NAME, "champion", "2")
    flagged = review(ws, env)["champion"]
    assert flagged["version"] == 2 and not flagged["gate"]["ok"]
    assert "outside `unlearn promote`" in flagged["gate"]["problems"][0]
    assert "FLAG:" in unlearn(["review"], ws, env)
    add_request(ws / "ledger", ["digits:train:1"], "erasure", "dpo", {"digits:train:1"})
    out = run(["unlearn", "run", "--once"], ws, env, code=1)
    assert "refusing to start a cycle from champion v2 of digits-ae" in out
    assert "Traceback" not in out and not (ws / ".cycles").exists()

    # v2 through the gate: its looser audit needs --force --reason, recorded as forced
    out = unlearn(["promote", "--version", "2", "--yes"], ws, env, code=1)
    assert "audited under looser tolerances than policy.yaml" in out
    assert "audit.tolerance.mia_auc = 0.3 > 0.05" in out
    unlearn(["promote", "--version", "2", "--yes", "--force", "--reason", "drill",
             "--by", "ci"], ws, env)
    after = review(ws, env)
    assert after["champion"]["gate"]["ok"]
    last = after["promotions"][-1]
    assert (last["to"], last["forced"], last["reason"]) == (2, True, "drill")
    assert last["audit"]["looser_than_policy"] == ["audit.tolerance.mia_auc = 0.3 > 0.05"]

    # an edited tag and a replaced artifact: never promotable, --force or not
    client.set_model_version_tag(NAME, "2", "audit.mia_auc", "0.5000")
    problem = review(ws, env)["champion"]["gate"]["problems"][0]
    assert "`audit.mia_auc` tag does not match" in problem and "tag edited" in problem
    artifacts = Path(urlparse(client.get_run(v1.run_id).info.artifact_uri).path)
    (artifacts / "checkpoint/unlearned.pt").write_bytes(b"other weights")
    out = unlearn(["promote", "--version", "1", "--yes", "--force", "--reason", "x"], ws,
              env, code=2)
    assert "version 1 cannot be promoted: its checkpoint/unlearned.pt hashes to" in out
