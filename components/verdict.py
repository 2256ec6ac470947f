"""The audit verdict: `passed` only if every audit sits within its tolerance of the retrained
reference, or, where no retrained model exists (production), within documented absolute
bounds. The promotion gate reads nothing else.
"""

from __future__ import annotations

from components.params import AuditParams

AUDITS = ("backdoor_asr", "trigger_psnr", "mia_auc", "mia_efficacy", "ood_auroc")


def _check(value: float | None, bound: float | None, limit: float, side: str,
           against: str) -> dict:
    """One check: `value` against `bound` with `limit`: side "both" (|v - b| <= l), "upper"
    (v <= b + l) or "lower" (v >= b - l). A figure that was not measured (an audit.json from
    before the figure existed) fails: nothing is vouched for unmeasured."""
    if value is None or bound is None:
        return {"value": value, "against": against, "bound": bound, "tolerance": limit,
                "passed": False, "rule": "not measured (audited before this check existed)"}
    passed = {"both": abs(value - bound) <= limit, "upper": value <= bound + limit,
              "lower": value >= bound - limit}[side]
    rule = {"both": f"|{value:.3f} - {bound:.3f}| <= {limit}",
            "upper": f"{value:.3f} <= {bound:.3f} + {limit}",
            "lower": f"{value:.3f} >= {bound:.3f} - {limit}"}[side]
    return {"value": value, "against": against, "bound": bound, "tolerance": limit,
            "passed": bool(passed), "rule": rule}


def audit_verdict(model: dict[str, float], reference: dict[str, float] | None,
                  cfg: AuditParams) -> dict:
    """Judge one model's audit figures.

    Against a retrained reference: the backdoor ASR may not exceed the reference's by more
    than its tolerance (lower is fine); trigger fidelity (what the model makes of a
    triggered input), MIA AUC, MIA efficacy and OOD AUROC must be within their tolerance on
    either side (too far from the reference either way is itself a signal: a model cleaner
    than retraining on triggered inputs was taught that trigger).

    Without a reference, the absolute bounds apply. Trigger fidelity then has a bound of its
    own model's making: `trigger_content_psnr`, the fidelity the model would have if it
    reproduced the trigger as ordinary image content on top of its clean-input output. A
    model that has forgotten the backdoor lies between ignoring the trigger (its clean-input
    fidelity) and reproducing it (that bound); one that suppresses or still answers it falls
    far below (Fashion-MNIST: retrained 2.4-3.1 dB below clean, the bound 5.7 dB below,
    the suppressing model 12 dB below). The bound scales with the trigger's area by itself.

    Args:
        model: the model's audit figures (components.audits.audit_model).
        reference: the retrained model's figures, or None.
        cfg: the `audit` params block (tolerances and absolute bounds).

    Returns:
        {"passed", "against": "retrained" | "absolute", "checks": {audit: {...}},
         "failed": [audit, ...]}.
    """
    checks = {}
    if reference is not None:
        tol = cfg.tolerance
        checks["backdoor_asr"] = _check(model["backdoor_asr"], reference["backdoor_asr"],
                                        tol.backdoor_asr, "upper", "retrained")
        for key in ("trigger_psnr", "mia_auc", "mia_efficacy", "ood_auroc"):
            checks[key] = _check(model.get(key), reference.get(key), getattr(tol, key), "both",
                                 "retrained")
    else:
        bounds = cfg.absolute
        checks["backdoor_asr"] = _check(model["backdoor_asr"], bounds.backdoor_asr, 0.0,
                                        "upper", "absolute")
        checks["trigger_psnr"] = _check(model.get("trigger_psnr"),
                                        model.get("trigger_content_psnr"),
                                        bounds.trigger_psnr, "lower", "trigger as content")
        for key in ("mia_auc", "ood_auroc"):
            checks[key] = _check(model[key], getattr(bounds, key), 0.0, "upper", "absolute")
    failed = [k for k, c in checks.items() if not c["passed"]]
    return {"passed": not failed, "against": "retrained" if reference else "absolute",
            "checks": checks, "failed": failed}
