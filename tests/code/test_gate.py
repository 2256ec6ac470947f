"""The gate's checks without a registry: which file the reports describe, and whether a
recorded verdict follows from its figures."""

import copy

from components.gate import provenance_problems, recheck_audit
from components.params import AuditParams
from components.verdict import AUDITS, audit_verdict

SHA, OTHER, DECOUPLED = "a" * 64, "b" * 64, "c" * 64
REFERENCE = {"backdoor_asr": 0.0, "mia_auc": 0.50, "mia_efficacy": 0.40, "ood_auroc": 0.66,
             "trigger_psnr": 19.1}
MODEL = {"backdoor_asr": 0.02, "mia_auc": 0.52, "mia_efficacy": 0.45, "ood_auroc": 0.60,
         "trigger_psnr": 18.8}


def audit_json(figures=MODEL, sha=SHA, params=None):
    params = params or AuditParams()
    return {"models": {"unlearned": figures, "retrained": REFERENCE},
            "verdict": audit_verdict(figures, REFERENCE, params), "sha256": {"unlearned": sha},
            "audit_params": params.model_dump(mode="json")}


def tag_of(audit):
    return {**audit["verdict"], **{k: audit["models"]["unlearned"][k] for k in AUDITS}}


def test_reports_of_this_model_pass_and_an_out_of_order_model_is_named():
    decouple, finetune = {"model_sha256": DECOUPLED}, {"init_sha256": DECOUPLED,
                                                        "model_sha256": SHA}
    assert provenance_problems(SHA, audit_json(), decouple, finetune) == []
    # `python -m flows.finetune` rerun after the audit: the file moved on, the reports did not
    problems = provenance_problems(OTHER, audit_json(), decouple, finetune)
    assert problems[0].startswith(f"models/unlearned.pt (sha256 {OTHER[:12]}) is not the model "
                                  f"reports/audit.json judged ({SHA[:12]})")
    assert "retention started from another decoupled model" in \
        provenance_problems(SHA, audit_json(), {"model_sha256": OTHER}, finetune)[0]
    assert provenance_problems(SHA, {"models": {}}, decouple, finetune)  # audit without hashes


def test_verdict_is_recomputed_and_every_edit_is_caught():
    audit = audit_json()
    verdict, problems = recheck_audit(audit, SHA, tag_of(audit))
    assert verdict["passed"] and problems == []
    assert "its audit judged" in recheck_audit(audit, OTHER, tag_of(audit))[1][0]
    edited_tag = {**tag_of(audit), "mia_auc": 0.51}
    assert "tag edited" in recheck_audit(audit, SHA, edited_tag)[1][0]
    # a failing model whose recorded verdict was flipped to "passed"
    failing = audit_json({**MODEL, "backdoor_asr": 0.9})
    flipped = copy.deepcopy(failing)
    flipped["verdict"]["passed"] = True
    verdict, problems = recheck_audit(flipped, SHA, tag_of(flipped))
    assert not verdict["passed"] and "does not follow from the figures" in problems[0]
