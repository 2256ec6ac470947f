"""The audit verdict: `passed` only if every audit sits within its tolerance of the retrained
reference, or, where no retrained model exists (production), within documented absolute
bounds. The promotion gate reads nothing else.
"""

from __future__ import annotations

from components.params import AuditParams


def auc_standard_error(auc: float, positives: int, negatives: int) -> float:
    """Hanley & McNeil's (1982) standard error of an AUC from its value and the two sample
    sizes: the sampling error a membership AUC is read with (0.5 ± 2 SE is no signal)."""
    if positives == 0 or negatives == 0:
        return float("nan")
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = (auc * (1 - auc) + (positives - 1) * (q1 - auc**2)
           + (negatives - 1) * (q2 - auc**2)) / (positives * negatives)
    return float(max(var, 0.0) ** 0.5)


AUDITS = ("backdoor_asr", "trigger_psnr", "mia_auc", "mia_efficacy", "ood_auroc")
# a forget set at least this share whole classes must have moved away from the retain set
WHOLE_CLASSES = 0.5


def _check(value: float | None, bound: float | None, limit: float | None, side: str,
           against: str) -> dict:
    """One check: `value` against `bound` with `limit`: side "both" (|v - b| <= l), "upper"
    (v <= b + l) or "lower" (v >= b - l). A figure that was not measured (an audit.json from
    before the figure existed) fails: nothing is vouched for unmeasured."""
    if value is None or bound is None or limit is None:
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

    Without a reference (production: no model is retrained), each figure is read against
    what a production team has: held-out data of the forget set's classes, which the model
    never saw, scored by the same model. A model that has forgotten the forget set treats it
    as it treats that held-out data, within the sampling error of the two samples:

    - MIA AUC (forget vs held-out): |AUC - 0.5| <= z · SE, SE from Hanley & McNeil with the
      two sample sizes (0.5 ± 0.04 for 2,000 forget and 600 held-out samples at z = 3);
    - OOD AUROC (vs retain): |AUROC(forget) - AUROC(held-out)| <= z · sqrt(SE_f² + SE_h²);
    - MIA efficacy: |share(forget) - share(held-out)| <= z · sqrt(p(1-p)(1/n_f + 1/n_h)),
      p(1-p) bounding the variance of a share of calls in [0, 1];
    - backdoor ASR at most `absolute.backdoor_asr`, and trigger fidelity at most
      `absolute.trigger_psnr` dB below `trigger_content_psnr`, the fidelity the model would
      have if it reproduced the trigger as ordinary image content on top of its clean-input
      output: a model that has forgotten the backdoor lies between ignoring the trigger and
      reproducing it; one that suppresses or still answers it falls far below (Fashion-
      MNIST: retrained 2.4-3.1 dB below clean, the bound 5.7 dB below, the suppressing model
      12 dB below). The bound scales with the trigger's area by itself;
    - the coarse caps `absolute.mia_auc` and `absolute.ood_auroc` as before;
    - where at least half of the forget set is whole classes (`whole_class_share`, no
      retain sample of their class), the forget set must have moved away from the retain
      set: OOD AUROC at least the original's + z · sqrt(SE_u² + SE_o²). A model that never
      saw a class scores its images unlike the retained classes (Fashion-MNIST sneakers:
      0.65 retrained, 0.52 original); the held-out bands cannot see this, because held-out
      data of that class moves with the forget set (make benchmark, `clean_class`: the
      original and four methods that forgot nothing passed them). It is necessary, not
      sufficient: how far a class must move takes a retrained model to say.

    What it cannot see: how much *worse* a retrained model would be on a forgotten class.
    Held-out data of that class is as unfamiliar to a model that forgot it as the forget set
    is, so a model that forgot the class and one that did not both pass the bands; the
    backdoor checks and the benchmark's agreement table (docs/production.md) say how far the
    reference-free verdict can be trusted.

    Args:
        model: the model's audit figures (components.audits.audit_model).
        reference: the retrained model's figures, or None.
        cfg: the `audit` params block (tolerances and absolute bounds).

    Returns:
        {"passed", "against": "retrained" | "reference-free", "checks": {audit: {...}},
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
        checks = reference_free_checks(model, cfg)
    failed = [k for k, c in checks.items() if not c["passed"]]
    return {"passed": not failed, "against": "retrained" if reference else "reference-free",
            "checks": checks, "failed": failed}


def reference_free_checks(model: dict[str, float], cfg: AuditParams) -> dict[str, dict]:
    """The checks of audit_verdict without a retrained reference (see its docstring)."""
    bounds, z = cfg.absolute, cfg.absolute.z
    get = model.get
    n_f, n_h, n_r = get("n_forget"), get("n_heldout"), get("n_retain")
    sizes = None not in (n_f, n_h, n_r) and min(n_f, n_h, n_r) > 0
    checks = {
        "backdoor_asr": _check(get("backdoor_asr"), bounds.backdoor_asr, 0.0, "upper",
                               "absolute"),
        "trigger_psnr": _check(get("trigger_psnr"), get("trigger_content_psnr"),
                               bounds.trigger_psnr, "lower", "trigger as content"),
        "mia_auc_cap": _check(get("mia_auc"), bounds.mia_auc, 0.0, "upper", "absolute"),
        "ood_auroc_cap": _check(get("ood_auroc"), bounds.ood_auroc, 0.0, "upper", "absolute"),
    }
    se = get("mia_auc_se")
    checks["mia_auc"] = _check(get("mia_auc"), 0.5, None if se is None else _band(z * se),
                               "both", "held-out (no signal)")
    ood, held = get("ood_auroc"), get("heldout_ood_auroc")
    limit = None
    if sizes and None not in (ood, held):
        limit = _band(z * (auc_standard_error(ood, int(n_f), int(n_r)) ** 2
                           + auc_standard_error(held, int(n_h), int(n_r)) ** 2) ** 0.5)
    checks["ood_auroc"] = _check(ood, held, limit, "both", "held-out")
    eff, held_eff = get("mia_efficacy"), get("heldout_mia_efficacy")
    limit = None
    if sizes and None not in (eff, held_eff):
        p = (eff * n_f + held_eff * n_h) / (n_f + n_h)
        limit = _band(z * (max(p * (1 - p), 1e-4) * (1 / n_f + 1 / n_h)) ** 0.5)
    checks["mia_efficacy"] = _check(eff, held_eff, limit, "both", "held-out")
    before, whole = get("original_ood_auroc"), get("whole_class_share")
    if whole is not None and whole >= WHOLE_CLASSES:
        bound = None
        if sizes and None not in (ood, before):
            bound = before + _band(z * (auc_standard_error(ood, int(n_f), int(n_r)) ** 2
                                        + auc_standard_error(before, int(n_f), int(n_r)) ** 2)
                                   ** 0.5)
        checks["class_moved"] = _check(ood, bound, 0.0, "lower",
                                       "the original's OOD AUROC + z·SE")
    return checks


def _band(width: float) -> float:
    return round(float(width), 4)
