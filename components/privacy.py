"""The (ε, δ) accounting of the decoupling phase (Gaussian mechanism, DESIGN.md §2.1).

Clipped gradient ascent with step η, clip norm C and a budget of T steps moves the weights
by at most Δ = η·T·C (each SGD step moves them by ≤ η·C). Adding N(0, σ²) to every released
weight with σ = Δ·sqrt(2 ln(1.25/δ))/ε makes the released update (ε, δ)-indistinguishable
from one computed without the forget set; the classical bound assumes ε ≤ 1.
"""

from __future__ import annotations

import math


def ascent_sensitivity(lr: float, steps: int, clip_norm: float) -> float:
    """Δ = η·T·C: the largest L2 distance the ascent can move the weights."""
    return lr * steps * clip_norm


def gaussian_sigma(epsilon: float, delta: float, sensitivity: float) -> float:
    """σ of the Gaussian mechanism for (ε, δ) at L2 sensitivity Δ.

    Args:
        epsilon: ε > 0.
        delta: δ in (0, 1).
        sensitivity: Δ ≥ 0.

    Returns:
        σ = Δ·sqrt(2 ln(1.25/δ))/ε.
    """
    if epsilon <= 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta}")
    return sensitivity * math.sqrt(2 * math.log(1.25 / delta)) / epsilon
