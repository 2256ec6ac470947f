"""The audit verdict: within tolerance of the retrained reference, or reference-free."""

import pytest

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


def test_reference_free_bands_read_the_forget_set_against_held_out_data():
    """Without a reference each figure is read against held-out data of the same classes
    under the same model, within z standard errors of the two samples."""
    cfg = AuditParams()
    good = {"backdoor_asr": 0.01, "trigger_psnr": 19.0, "trigger_content_psnr": 15.8,
            "mia_auc": 0.51, "mia_auc_se": 0.013, "mia_efficacy": 0.72,
            "heldout_mia_efficacy": 0.70, "ood_auroc": 0.66, "heldout_ood_auroc": 0.65,
            "n_forget": 2000.0, "n_heldout": 600.0, "n_retain": 2000.0}
    verdict = audit_verdict(good, None, cfg)
    assert verdict["passed"] and verdict["against"] == "reference-free"
    assert verdict["checks"]["mia_auc"]["tolerance"] == pytest.approx(0.039)
    failures = {"mia_auc": 0.45,  # 3.8 SE below 0.5: the forget set looks *less* seen
                "ood_auroc": 0.90,  # pushed towards noise, unlike held-out data
                "mia_efficacy": 0.95,
                "backdoor_asr": 0.3,
                "trigger_psnr": 9.3}  # suppressed: far below the trigger-as-content bound
    for key, value in failures.items():
        assert audit_verdict({**good, key: value}, None, cfg)["failed"] == [key], key
    assert audit_verdict({**good, "trigger_psnr": 15.0}, None, cfg)["passed"]  # within 1 dB
    # figures an older audit did not measure are never vouched for
    old = {k: good[k] for k in ("backdoor_asr", "mia_auc", "mia_efficacy", "ood_auroc")}
    assert not audit_verdict(old, None, cfg)["passed"]


def test_a_forgotten_class_must_have_moved_away_from_the_retain_set():
    """The held-out bands pass a model that forgot nothing of a class (held-out data of the
    class stays as familiar as the forget set); where the forget set is mostly whole
    classes, its OOD AUROC must exceed the original's by z standard errors (2,000 samples a
    side: 0.52 + 0.04). Scattered samples are not asked to move."""
    cfg = AuditParams()
    figures = {"backdoor_asr": 0.0, "trigger_psnr": 19.0, "trigger_content_psnr": 15.8,
               "mia_auc": 0.50, "mia_auc_se": 0.013, "mia_efficacy": 0.50,
               "heldout_mia_efficacy": 0.50, "ood_auroc": 0.52, "heldout_ood_auroc": 0.52,
               "n_forget": 2000.0, "n_heldout": 600.0, "n_retain": 2000.0,
               "original_ood_auroc": 0.52}
    did_nothing = audit_verdict({**figures, "whole_class_share": 1.0}, None, cfg)
    assert did_nothing["failed"] == ["class_moved"]
    assert did_nothing["checks"]["class_moved"]["bound"] == pytest.approx(0.52 + 0.038, abs=0.003)
    forgot = {**figures, "ood_auroc": 0.66, "heldout_ood_auroc": 0.65, "whole_class_share": 1.0}
    assert audit_verdict(forgot, None, cfg)["passed"]
    assert audit_verdict({**figures, "whole_class_share": 0.0}, None, cfg)["passed"]
    assert "class_moved" not in audit_verdict(figures, None, cfg)["checks"]  # older audits
