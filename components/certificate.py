"""The (ε, δ) certificate attached to every unlearned model version, written from what the
run did (the `privacy` record of reports/decouple.json and what reports/finetune.json says
the retention read), never from params.

`covers` says which model file the bound is about:

- `released model`: models/unlearned.pt, the registered artifact;
- `decoupled model only`: models/decoupled.pt; the retention after it read data the bound
  does not cover (the forget set, or the start model through distillation), so the released
  model gets no bound;
- `none`: no calibrated noise was added.

`epsilon` is the released model's ε: "inf" (ε = ∞, spelled so that strict JSON readers
accept it) wherever the released model is not covered. `relation` says what the bound
compares: the certified mode bounds *unlearning* (vs the same algorithm run from a model
that never saw the forget split); the decoupling noise bounds only the *ascent update*
(vs the start model with the same noise, a model trained on the forget split). Derivations:
docs/certificate.md.
"""

from __future__ import annotations

from components.params import DecoupleParams
from components.privacy import ascent_sensitivity

NO_BOUND = "inf"
RELEASED, DECOUPLED_ONLY, NONE = "released model", "decoupled model only", "none"
ASCENT_MECHANISM = ("Gaussian mechanism on the ascent's update, analytic calibration "
                    "(Balle & Wang 2018)")
ASCENT_RELATION = ("ascent update: the weights vs the start model with the same noise and no "
                   "ascent (the start model was trained on the forget split)")
RELEASED_FILE, DECOUPLED_FILE = "models/unlearned.pt", "models/decoupled.pt"


def ascent_record(cfg: DecoupleParams, sigma: float, steps: int) -> dict:
    """The decoupling's `privacy` record ({} without noise): what was applied, in the run."""
    if cfg.noise.epsilon is None:
        return {}
    return {"privacy": {
        "mechanism": ASCENT_MECHANISM, "relation": ASCENT_RELATION,
        "epsilon": cfg.noise.epsilon, "delta": cfg.noise.delta, "sigma": sigma,
        "sensitivity": ascent_sensitivity(cfg.lr, cfg.max_steps, cfg.clip_norm),
        "lr": cfg.lr, "clip_norm": cfg.clip_norm, "budget": cfg.max_steps, "steps": steps,
        "params": cfg.params, "reads": ["forget"]}}


def _post_processing(finetune: dict) -> bool:
    """Whether the retention after the bounded model read nothing but the retain set."""
    return finetune.get("steps", 0) == 0 or set(finetune.get("reads", ["?"])) <= {"retain"}


def make_certificate(decouple: dict, finetune: dict, forget_split_hash: str,
                     model_sha256: str) -> dict:
    """The certificate of one unlearning run.

    Args:
        decouple: reports/decouple.json (method, and a `privacy` record if noise was added).
        finetune: reports/finetune.json (steps, and `reads`: the sets the retention read).
        forget_split_hash: sha256 of the forget manifest the run unlearned.
        model_sha256: sha256 of the released model file (models/unlearned.pt).

    Returns:
        {"covers", "epsilon", "delta", "mechanism", "relation", "sigma", "lr", "clip_norm",
         "steps", "budget", "sensitivity", "start_radius", "model_file", "model_sha256",
         "forget_split_hash", "decoupled", "statement"}; absent figures are None.
    """
    method = decouple.get("method", "?")
    record = decouple.get("privacy")
    base = {"method": method, "model_file": RELEASED_FILE, "model_sha256": model_sha256,
            "forget_split_hash": forget_split_hash, "sigma": 0.0, "lr": None,
            "clip_norm": None, "steps": decouple.get("steps"), "budget": None,
            "sensitivity": None, "start_radius": None, "mechanism": None, "relation": None,
            "decoupled": None}
    if not record:
        why = "ran without noise (unlearn.decouple.noise.epsilon is null)" \
            if method.startswith("decouple") else "adds no calibrated noise"
        return {**base, "covers": NONE, "epsilon": NO_BOUND, "delta": None,
                "statement": f"No (ε, δ) bound is claimed for {RELEASED_FILE}: method "
                             f"'{method}' {why}, so ε = ∞."}
    figures = {k: record.get(k) for k in ("sigma", "lr", "clip_norm", "steps", "budget",
                                          "sensitivity", "start_radius", "mechanism",
                                          "relation")}
    eps, delta = record["epsilon"], record["delta"]
    released = _post_processing(finetune)
    covers = RELEASED if released else DECOUPLED_ONLY
    where = (f"{RELEASED_FILE} (sha256 {model_sha256[:12]})" if released
             else DECOUPLED_FILE)
    if "start_radius" in record:  # the certified mode
        what = (f"{where} is ({eps:g}, {delta:g})-indistinguishable from what the same "
                "algorithm returns when started from a model that never saw the forget split "
                f"{forget_split_hash[:12]}: {record['steps']} SGD steps on the retain set "
                f"(step η = {record['lr']:g}, gradients clipped to C1 = {record['clip_norm']:g}, "
                f"N(0, σ²) with σ = {record['sigma']:.4g} on every weight after each step) "
                f"from a start projected onto a ball of radius C0 = {record['start_radius']:g}; "
                f"the {record.get('finish_steps', 0)} noiseless steps that follow read only the "
                "retain set. Read it as: up to (ε, δ), this model could have been computed "
                "without the forget data.")
    else:
        what = (f"{where} is ({eps:g}, {delta:g})-indistinguishable from the start model "
                f"with the same noise and no ascent: the ascent (at most T = {record['budget']} "
                f"clipped SGD steps of η = {record['lr']:g}, gradient norm ≤ C = "
                f"{record['clip_norm']:g}, so Δ = η·T·C = {record['sensitivity']:.4g}; "
                f"{record['steps']} taken) was released with σ = {record['sigma']:.4g}. The start "
                "model was trained on the forget split, so this bounds how far the ascent moved "
                "the model, not what it still knows of the forget data: no unlearning "
                "certificate.")
    if not released:
        reads = ", ".join(sorted(set(finetune.get("reads", [])) - {"retain"}))
        what += (f" The retention after it read {reads or 'more than the retain set'}, so "
                 f"{RELEASED_FILE} gets no bound (ε = ∞).")
        return {**base, **figures, "covers": covers, "epsilon": NO_BOUND, "delta": None,
                "decoupled": {"file": DECOUPLED_FILE, "epsilon": eps, "delta": delta},
                "statement": what}
    return {**base, **figures, "covers": covers, "epsilon": eps, "delta": delta,
            "statement": what}
