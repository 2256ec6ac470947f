"""The audit verdict: within tolerance of the retrained reference, or absolute bounds."""

from components.params import AuditParams
from components.verdict import audit_verdict

REFERENCE = {"backdoor_asr": 0.0, "mia_auc": 0.50, "mia_efficacy": 0.40, "ood_auroc": 0.66,
             "trigger_psnr": 19.1}


def test_close_to_the_reference_passes():
    model = {"backdoor_asr": 0.02, "mia_auc": 0.52, "mia_efficacy": 0.45, "ood_auroc": 0.60,
             "trigger_psnr": 18.4}
    verdict = audit_verdict(model, REFERENCE, AuditParams())
    assert verdict["passed"] and verdict["against"] == "retrained" and verdict["failed"] == []


def test_each_audit_can_fail_it():
    cfg = AuditParams()
    cases = {"backdoor_asr": 0.90, "mia_auc": 0.60, "mia_efficacy": 0.05, "ood_auroc": 0.98,
             "trigger_psnr": 9.3}
    for key, value in cases.items():
        verdict = audit_verdict({**REFERENCE, key: value}, REFERENCE, cfg)
        assert not verdict["passed"] and verdict["failed"] == [key], key
        assert not verdict["checks"][key]["passed"]


def test_over_unlearning_fails_but_a_lower_backdoor_rate_does_not():
    cfg = AuditParams()
    pushed_to_noise = {**REFERENCE, "ood_auroc": 0.99}  # far more foreign than retraining
    assert audit_verdict(pushed_to_noise, REFERENCE, cfg)["failed"] == ["ood_auroc"]
    ref_with_asr = {**REFERENCE, "backdoor_asr": 0.2}
    assert audit_verdict(REFERENCE, ref_with_asr, cfg)["passed"]  # ASR below the reference


def test_a_suppressed_trigger_fails_though_its_asr_is_zero():
    """The demo's old default: ASR 0, but 9.3 dB on triggered inputs vs the retrained 19.1."""
    suppressing = {**REFERENCE, "trigger_psnr": 9.3}
    verdict = audit_verdict(suppressing, REFERENCE, AuditParams())
    assert verdict["failed"] == ["trigger_psnr"] and verdict["checks"]["backdoor_asr"]["passed"]
    cleaner = {**REFERENCE, "trigger_psnr": 20.5}  # taught to erase the trigger: also a signal
    assert audit_verdict(cleaner, REFERENCE, AuditParams())["failed"] == ["trigger_psnr"]


def test_absolute_bounds_without_a_reference():
    cfg = AuditParams()
    good = {"backdoor_asr": 0.01, "mia_auc": 0.51, "mia_efficacy": 0.5, "ood_auroc": 0.7,
            "trigger_psnr": 19.0, "trigger_content_psnr": 15.8}
    verdict = audit_verdict(good, None, cfg)
    assert verdict["passed"] and verdict["against"] == "absolute"
    assert "mia_efficacy" not in verdict["checks"]  # no absolute meaning without a reference
    assert audit_verdict({**good, "backdoor_asr": 0.3}, None, cfg)["failed"] == ["backdoor_asr"]
    # below the trigger-as-content bound by more than its margin: suppression or a backdoor
    assert audit_verdict({**good, "trigger_psnr": 9.3}, None, cfg)["failed"] == ["trigger_psnr"]
    assert audit_verdict({**good, "trigger_psnr": 15.0}, None, cfg)["passed"]  # within 1 dB
