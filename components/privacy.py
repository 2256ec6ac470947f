"""(ε, δ) accounting and the noise behind every certificate (docs/certificate.md).

Two mechanisms:

- the decoupling noise (`unlearn.decouple.noise`): clipped gradient ascent with step η,
  clip norm C and a budget of T steps moves the weights by at most Δ = η·T·C; adding
  N(0, σ²) to every moved weight releases that update through the Gaussian mechanism. σ is
  calibrated with the analytic Gaussian mechanism (Balle & Wang, ICML 2018, Theorem 8),
  exact for every ε > 0 (the classic σ = Δ·sqrt(2 ln(1.25/δ))/ε holds only for ε < 1 and
  is larger there);
- the certified mode (`unlearn.certified`, Koloskova et al., ICML 2025): T steps of noisy
  clipped SGD on the retain set from a start projected onto a ball of radius C0. Privacy
  amplification by iteration bounds the Rényi divergence of every order α between it and
  the same chain started anywhere else in the ball by α·(2·C0 + 2·η·T·C1)² / (2·T·σ²);
  the standard RDP -> (ε, δ) conversion gives the certificate.

The noise is drawn from a generator seeded with the OS's entropy (`secrets`), the same seed
on every data-parallel worker (rank 0 draws it, the others receive it), and the seed is
never logged or saved: whoever can read the params, the MLflow run or a checkpoint cannot
regenerate the noise and subtract it.
"""

from __future__ import annotations

import math
import secrets

import numpy as np
import torch
import torch.distributed as dist
from scipy.special import log_ndtr, ndtr

# orders α of the RDP -> (ε, δ) conversion: any α > 1 gives a valid bound, the grid only
# decides how close to the best one we get (refined by golden-section search around it)
_ALPHAS = np.exp(np.linspace(np.log(1 + 1e-3), np.log(1e5), 4000))


def ascent_sensitivity(lr: float, steps: int, clip_norm: float) -> float:
    """Δ = η·T·C: the largest L2 distance the ascent can move the weights."""
    return lr * steps * clip_norm


def _check_budget(epsilon: float, delta: float) -> None:
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"epsilon must be a finite number > 0, got {epsilon}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta}")


def classic_gaussian_sigma(epsilon: float, delta: float, sensitivity: float) -> float:
    """σ = Δ·sqrt(2 ln(1.25/δ))/ε, the classic Gaussian mechanism (valid for ε < 1 only);
    kept as the reference the analytic calibration is tested against."""
    _check_budget(epsilon, delta)
    return sensitivity * math.sqrt(2 * math.log(1.25 / delta)) / epsilon


def gaussian_delta(epsilon: float, sigma: float, sensitivity: float) -> float:
    """The smallest δ for which N(0, σ²) at L2 sensitivity Δ is (ε, δ)-indistinguishable:
    Φ(Δ/2σ - εσ/Δ) - e^ε·Φ(-Δ/2σ - εσ/Δ) (Balle & Wang 2018, Theorem 8)."""
    if sensitivity == 0:
        return 0.0
    if sigma <= 0:
        return 1.0
    a, b = sensitivity / (2 * sigma), epsilon * sigma / sensitivity
    # e^ε·Φ(-a-b) in logs: e^ε overflows a float for ε > 709
    return max(0.0, float(ndtr(a - b) - math.exp(epsilon + log_ndtr(-a - b))))


def gaussian_sigma(epsilon: float, delta: float, sensitivity: float) -> float:
    """σ of the analytic Gaussian mechanism for (ε, δ) at L2 sensitivity Δ: the smallest σ
    with gaussian_delta(ε, σ, Δ) ≤ δ, found by bisection (δ falls as σ grows).

    Args:
        epsilon: ε > 0, finite.
        delta: δ in (0, 1).
        sensitivity: Δ ≥ 0.

    Returns:
        σ (0 when Δ = 0: nothing to hide).

    Raises:
        ValueError: for ε, δ or Δ out of range.
    """
    _check_budget(epsilon, delta)
    if sensitivity < 0:
        raise ValueError(f"sensitivity must be ≥ 0, got {sensitivity}")
    if sensitivity == 0:
        return 0.0
    lo, hi = 0.0, sensitivity
    while gaussian_delta(epsilon, hi, sensitivity) > delta:  # δ -> 0 as σ grows, for any ε
        lo, hi = hi, 2 * hi
    for _ in range(200):  # to float precision: hi is always a valid σ
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        if gaussian_delta(epsilon, mid, sensitivity) > delta:
            lo = mid
        else:
            hi = mid
    return hi


def rdp_to_dp(rho: float, delta: float) -> float:
    """ε of a mechanism whose Rényi divergence of every order α is at most α·ρ, at δ.

    Uses ε = D_α + log((α-1)/α) - (log δ + log α)/(α-1) (Balle et al., AISTATS 2020; Canonne,
    Kamath & Steinke, NeurIPS 2020), minimised over α.
    """
    if rho <= 0:
        return 0.0

    def eps(alpha: np.ndarray | float) -> np.ndarray | float:
        return (alpha * rho + np.log1p(-1 / alpha)
                - (math.log(delta) + np.log(alpha)) / (alpha - 1))

    values = eps(_ALPHAS)
    best = int(np.argmin(values))
    lo, hi = _ALPHAS[max(best - 1, 0)], _ALPHAS[min(best + 1, len(_ALPHAS) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(60):  # eps is convex in α near its minimum: golden-section refinement
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if eps(a) < eps(b):
            hi = b
        else:
            lo = a
    # for α·δ > 1 the bound dips below 0: a distance-0 pair is (0, δ)-close anyway
    return max(0.0, float(min(values[best], eps((lo + hi) / 2))))


def iteration_rdp(start_radius: float, lr: float, clip_norm: float, steps: int,
                  sigma: float) -> float:
    """ρ of T noisy clipped SGD steps from a start in a ball of radius C0: every Rényi
    divergence of order α between two such chains is at most α·ρ, with
    ρ = (2·C0 + 2·η·T·C1)² / (2·T·σ²) (docs/certificate.md, derivation)."""
    if steps < 1 or sigma <= 0:
        return math.inf
    shift = 2 * start_radius + 2 * lr * steps * clip_norm
    return shift**2 / (2 * steps * sigma**2)


def iteration_epsilon(start_radius: float, lr: float, clip_norm: float, steps: int,
                      sigma: float, delta: float) -> float:
    """ε at δ of T noisy clipped SGD steps with per-step noise σ (see iteration_rdp)."""
    rho = iteration_rdp(start_radius, lr, clip_norm, steps, sigma)
    return math.inf if math.isinf(rho) else rdp_to_dp(rho, delta)


def iteration_sigma(epsilon: float, delta: float, start_radius: float, lr: float,
                    clip_norm: float, steps: int) -> float:
    """The per-step σ for which T noisy clipped SGD steps are (ε, δ)-unlearning.

    Args:
        epsilon: ε > 0, finite.
        delta: δ in (0, 1).
        start_radius: C0, the radius of the ball the start model is projected onto.
        lr: η, the SGD step.
        clip_norm: C1, the gradient clip.
        steps: T ≥ 1, the noisy steps.

    Returns:
        σ: the largest ρ with rdp_to_dp(ρ, δ) ≤ ε, turned into σ = shift / sqrt(2·T·ρ).

    Raises:
        ValueError: for ε, δ out of range or T < 1.
    """
    _check_budget(epsilon, delta)
    if steps < 1:
        raise ValueError(f"steps must be ≥ 1, got {steps}")
    lo, hi = 0.0, 1.0
    while rdp_to_dp(hi, delta) <= epsilon:
        lo, hi = hi, 2 * hi
    for _ in range(100):  # lo > 0 after it: rdp_to_dp(ρ) is 0 for ρ small enough
        mid = (lo + hi) / 2
        if rdp_to_dp(mid, delta) <= epsilon:
            lo = mid
        else:
            hi = mid
    shift = 2 * start_radius + 2 * lr * steps * clip_norm
    return shift / math.sqrt(2 * steps * lo)


def shared_noise_seed(device: torch.device) -> int:
    """A seed from the OS's entropy, the same on every data-parallel worker (rank 0 draws
    it and broadcasts it). Never log it, never save it: it regenerates the noise."""
    seed = secrets.randbits(62)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = torch.tensor([seed], dtype=torch.int64, device=device)
        dist.broadcast(box, src=0)
        seed = int(box.item())
    return seed


def noise_generator(device: torch.device) -> torch.Generator:
    """A CPU generator for Gaussian noise, seeded by shared_noise_seed (identical draws on
    every worker, so that data-parallel replicas stay equal)."""
    return torch.Generator().manual_seed(shared_noise_seed(device))
