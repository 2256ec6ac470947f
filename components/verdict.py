"""The audit verdict: `passed` only if every audit sits within its tolerance of the retrained
reference, or, where no retrained model exists (production), within documented absolute
bounds. The promotion gate reads nothing else.
"""

from __future__ import annotations

from components.params import AuditParams

AUDITS = ("backdoor_asr", "mia_auc", "mia_efficacy", "ood_auroc")


def _check(value: float, bound: float, limit: float, two_sided: bool, against: str) -> dict:
    passed = abs(value - bound) <= limit if two_sided else value <= bound + limit
    rule = f"|{value:.3f} - {bound:.3f}| <= {limit}" if two_sided else \
        f"{value:.3f} <= {bound:.3f} + {limit}"
    return {"value": value, "against": against, "bound": bound, "tolerance": limit,
            "passed": bool(passed), "rule": rule}


def audit_verdict(model: dict[str, float], reference: dict[str, float] | None,
                  cfg: AuditParams) -> dict:
    """Judge one model's audit figures.

    Against a retrained reference: the backdoor ASR may not exceed the reference's by more
    than its tolerance (lower is fine); MIA AUC, MIA efficacy and OOD AUROC must be within
    their tolerance on either side (too far below the reference is over-unlearning, which
    is itself a membership signal). Without a reference, the absolute bounds apply.

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
                                        tol.backdoor_asr, False, "retrained")
        for key in ("mia_auc", "mia_efficacy", "ood_auroc"):
            checks[key] = _check(model[key], reference[key], getattr(tol, key), True, "retrained")
    else:
        bounds = cfg.absolute
        for key in ("backdoor_asr", "mia_auc", "ood_auroc"):
            checks[key] = _check(model[key], getattr(bounds, key), 0.0, False, "absolute")
    failed = [k for k, c in checks.items() if not c["passed"]]
    return {"passed": not failed, "against": "retrained" if reference else "absolute",
            "checks": checks, "failed": failed}
