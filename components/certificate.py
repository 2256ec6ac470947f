"""The (ε, δ) certificate attached to every unlearned model version.

With noise (`unlearn.decouple.noise.epsilon` set), the decoupling update is released through
the Gaussian mechanism (components.privacy): the certificate gives ε, δ, σ, the clip norm C,
the step η, the step budget T, the sensitivity Δ = η·T·C and the forget split it is about.
Without noise it says ε = ∞ rather than claim a bound.

What the bound covers, honestly: the weights right after decoupling (models/decoupled.pt).
Retention that reads only the retain set is post-processing and keeps the bound for the
released model; retention that keeps the forget set decoupled (`keep_decoupled` > 0) reads
the forget set again, so the released model gets no bound of its own.
"""

from __future__ import annotations

from components.params import DecoupleParams
from components.privacy import ascent_sensitivity, gaussian_sigma

NO_BOUND = "inf"  # ε = ∞, spelled so that strict JSON readers (jq, JavaScript) accept it


def make_certificate(cfg: DecoupleParams, forget_split_hash: str, method: str,
                     keep_decoupled: float) -> dict:
    """The certificate of one unlearning run.

    Args:
        cfg: the decoupling block that ran (noise, clip, step, budget).
        forget_split_hash: sha256 of the forget manifest the run unlearned.
        method: the unlearning method (only the decoupling methods can carry a bound).
        keep_decoupled: the retention's γ (> 0: retention read the forget set again).

    Returns:
        {"epsilon", "delta", "sigma", "clip_norm", "lr", "steps", "sensitivity",
         "forget_split_hash", "covers", "statement"}; epsilon is "inf" without a bound.
    """
    base = {"clip_norm": cfg.clip_norm, "lr": cfg.lr, "steps": cfg.max_steps,
            "forget_split_hash": forget_split_hash}
    eps = cfg.noise.epsilon
    if eps is None or not method.startswith("decouple"):
        why = "no calibrated noise was added" if method.startswith("decouple") else \
            f"method '{method}' adds no calibrated noise"
        return {**base, "epsilon": NO_BOUND, "delta": None, "sigma": 0.0, "sensitivity": None,
                "covers": "nothing",
                "statement": f"No (ε, δ) bound is claimed: {why} (ε = ∞)."}
    sens = ascent_sensitivity(cfg.lr, cfg.max_steps, cfg.clip_norm)
    sigma = gaussian_sigma(eps, cfg.noise.delta, sens)
    covers = "decoupled weights only" if keep_decoupled > 0 else "released model"
    caveat = "" if eps <= 1 else "; the classical bound assumes ε ≤ 1"
    statement = (
        f"The decoupling update (at most T = {cfg.max_steps} clipped SGD steps of η = {cfg.lr}, "
        f"gradient norm ≤ C = {cfg.clip_norm}, so L2 sensitivity Δ = η·T·C = {sens:.4g}) was "
        f"released with Gaussian noise σ = {sigma:.4g}: it is ({eps:g}, {cfg.noise.delta:g})-"
        f"indistinguishable (Gaussian mechanism{caveat}) "
        f"for the forget split {forget_split_hash[:12]}. "
        + ("Retention read only the retain set (post-processing): the bound holds for the "
           "released model." if keep_decoupled == 0 else
           "Retention kept the forget set decoupled and so read it again: the bound holds for "
           "the decoupled weights, not for the released model.")
    )
    return {**base, "epsilon": eps, "delta": cfg.noise.delta, "sigma": sigma,
            "sensitivity": sens, "covers": covers, "statement": statement}
