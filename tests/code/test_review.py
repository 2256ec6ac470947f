"""What a reviewer reads on a version, from plain dicts: the derived model name, the params a
stage logs, the method's variant, the forget scope in words, the flat audit tags and the
Markdown description."""

from components.params import AuditParams, Params, override, registered_model_name
from components.review import (
    audit_tags,
    forget_scope,
    method_keys,
    method_variant,
    model_keys,
    pick,
    request_ids,
    requests_tag,
    version_description,
)
from components.verdict import audit_verdict

SUMMARY = {"dataset": "fashion-mnist", "counts": {"forget": 5374, "retain": 48626,
                                                  "heldout": 6000, "test": 10000},
           "poisoned": 537, "forget_classes": ["sneaker"], "requests": [],
           "hashes": {"forget": "6c188be8" + "0" * 56, "retain": "eb362bd5" + "0" * 56}}
REFERENCE = {"backdoor_asr": 0.0, "trigger_psnr": 19.0, "mia_auc": 0.50, "mia_efficacy": 0.40,
             "ood_auroc": 0.66}
FIGURES = {"backdoor_asr": 0.02, "trigger_psnr": 18.5, "mia_auc": 0.52, "mia_efficacy": 0.45,
           "ood_auroc": 0.60}


def test_one_registered_model_per_model_line_unless_named():
    assert registered_model_name(Params()) == "fashion-mnist-ae"  # the demo's, as before
    mae = override(Params(), {"data": {"dataset": "imagefolder", "path": "/x"},
                              "model": {"family": "mae", "task": "inpaint"}})
    assert registered_model_name(mae) == "imagefolder-mae-inpaint"
    named = override(mae, {"mlflow": {"model_name": "my-line"}})
    assert registered_model_name(named) == "my-line"


def test_a_stage_logs_only_the_params_it_reads():
    params = Params()
    dumped = params.model_dump(mode="json")
    keys = pick(dumped, method_keys("decouple", retention=True))
    assert "unlearn.decouple.lr" in keys and "unlearn.finetune.transplant" in keys
    assert not any(k.startswith(("unlearn.salun", "unlearn.certified")) for k in keys)
    assert set(pick(dumped, method_keys("retrain", retention=False))) >= {"train.epochs",
                                                                         "unlearn.retrain.epochs"}
    literal = pick(dumped, method_keys("decouple_literal", retention=True))
    assert {"unlearn.decouple.clip_norm", "unlearn.decouple_literal.quantile"} <= literal.keys()
    model = pick(dumped, model_keys(params))
    assert "model.ae.latent_dim" in model and not any(k.startswith("model.mae") for k in model)


def test_the_variant_says_which_knobs_differ_from_the_defaults():
    assert method_variant(Params(), retention=True) == "defaults"
    tuned = override(Params(), {"unlearn": {"finetune": {"transplant": 0.0},
                                            "salun": {"lr": 0.5}}})
    assert method_variant(tuned, retention=True) == "finetune.transplant=0.0"  # salun: unread


def test_the_forget_scope_in_words():
    assert forget_scope(SUMMARY, Params()) == "class 7 (sneaker) of fashion-mnist"
    with_requests = {**SUMMARY, "requests": ["req-0001", "req-0002"]}
    assert forget_scope(with_requests, Params()) == \
        "class 7 and 2 deletion requests of fashion-mnist"
    sample = override(Params(), {"forget": {"kind": "sample", "fraction": 0.01}})
    assert forget_scope(SUMMARY, sample) == \
        "a seeded random 1.00% of the training samples of fashion-mnist"
    assert requests_tag([]) == "none" and request_ids("none") == [] and request_ids("") == []
    assert request_ids(requests_tag(["req-0001", "req-0002"])) == ["req-0001", "req-0002"]


def record(verdict: dict) -> dict:
    return {"model_name": "fashion-mnist-ae", "version": 3, "method": "decouple",
            "variant": "defaults", "model": {"family": "ae", "task": "reconstruction",
                                             "shape": "1x28x28"},
            "scope": {"text": "class 7 (sneaker) of fashion-mnist", "counts": SUMMARY["counts"],
                      "poisoned": 537, "requests": [], "forget_split_hash": "6c188be8" * 8,
                      "retain_split_hash": "eb362bd5" * 8, "splits_md5": "0a1b2c3d4e5f.dir"},
            "audit": {**verdict, **FIGURES},
            "certificate": {"covers": "none", "epsilon": "inf",
                            "statement": "No (ε, δ) bound is claimed for models/unlearned.pt"},
            "provenance": {"git_commit": "abcdef1234567890", "dvc_lock_hash": "9" * 64,
                           "artifact_sha256": "a" * 64, "run_id": "r1", "pipeline": "repro-1"}}


def test_the_description_answers_the_reviewers_questions():
    verdict = audit_verdict(FIGURES, REFERENCE, AuditParams())
    text = version_description(record(verdict), {})
    assert text.startswith("## fashion-mnist-ae v3: `decouple` unlearning of class 7 (sneaker)")
    assert "5,374 training images (537 of them carry the backdoor trigger)" in text
    assert "**Deletion requests:** none" in text
    assert "### Audit: PASSED, against the retrained reference" in text
    assert "| mia_auc | 0.52 | retrained | 0.5 | 0.05 | `|0.520 - 0.500| <= 0.05` | ok |" in text
    assert "### Certificate: covers nothing (ε = ∞)" in text
    assert "Not generated yet" in text and "git commit `abcdef123456`" in text
    assert "Not promoted through `unlearn promote`" in text
    tags = {"report.link": "#/experiments/1/runs/r1/artifacts/report/report.html",
            "report.uri": "runs:/r1/report/report.html", "promoted.by": "Ada Lovelace",
            "promoted.at": "2026-12-05T10:00:00Z", "promoted.reason": "audit passed",
            "promoted.forced": "false"}
    text = version_description(record(verdict), tags)
    assert "[report.html](#/experiments/1/runs/r1/artifacts/report/report.html)" in text
    assert "by **Ada Lovelace** at 2026-12-05T10:00:00Z: audit passed" in text


def test_one_flat_tag_per_audit_rule():
    verdict = audit_verdict({**FIGURES, "backdoor_asr": 0.4}, REFERENCE, AuditParams())
    tags = audit_tags(verdict)
    assert tags["audit.backdoor_asr.rule"] == "FAIL: 0.400 <= 0.000 + 0.05"
    assert tags["audit.mia_auc.rule"] == "ok: |0.520 - 0.500| <= 0.05"
    free = audit_tags(audit_verdict(FIGURES, None, AuditParams()))
    assert "audit.mia_auc_cap.rule" in free  # reference-free checks get theirs too
