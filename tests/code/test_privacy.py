"""(ε, δ) accounting: the analytic Gaussian mechanism against an independent numerical
integration and the classic bound, the certified mode's Rényi accounting against the
Gaussian mechanism it reduces to, and noise that nobody can regenerate."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from components.privacy import (
    ascent_sensitivity,
    classic_gaussian_sigma,
    gaussian_delta,
    gaussian_sigma,
    iteration_epsilon,
    iteration_rdp,
    iteration_sigma,
    noise_generator,
    rdp_to_dp,
    shared_noise_seed,
)

CPU = torch.device("cpu")


def hockey_stick(epsilon: float, sigma: float, sensitivity: float) -> float:
    """δ(ε) of N(0, σ²) vs N(Δ, σ²) by integrating max(0, p - e^ε q): the definition itself,
    not the closed form the code uses."""
    p, q = stats.norm(sensitivity, sigma), stats.norm(0, sigma)
    # the integrand is positive right of the point where p = e^ε q
    start = sensitivity / 2 + epsilon * sigma**2 / sensitivity
    value, _ = integrate.quad(lambda x: p.pdf(x) - math.exp(epsilon) * q.pdf(x), start, np.inf,
                              epsabs=1e-14, epsrel=1e-10)
    return value


def test_sensitivity_is_step_times_steps_times_clip():
    assert ascent_sensitivity(0.01, 200, 1.0) == pytest.approx(2.0)
    assert ascent_sensitivity(0.5, 4, 0.25) == pytest.approx(0.5)


def test_classic_gaussian_sigma_hand_computed():
    # Δ = 2, ε = 1, δ = 1e-5: σ = 2·sqrt(2·ln(125000)) = 2·sqrt(23.47214) = 9.68961
    assert classic_gaussian_sigma(1.0, 1e-5, 2.0) == pytest.approx(9.68961, rel=1e-5)


@pytest.mark.parametrize("epsilon", [0.1, 1.0, 4.0, 16.0, 200.0])
@pytest.mark.parametrize("delta", [1e-5, 1e-3])
def test_analytic_sigma_is_exactly_tight(epsilon, delta):
    sigma = gaussian_sigma(epsilon, delta, 1.0)
    # the δ it reaches, by integration of the definition: δ, and a σ 1 % smaller misses it
    assert hockey_stick(epsilon, sigma, 1.0) == pytest.approx(delta, rel=1e-4)
    assert gaussian_delta(epsilon, sigma, 1.0) == pytest.approx(delta, rel=1e-6)
    assert hockey_stick(epsilon, 0.99 * sigma, 1.0) > delta
    assert gaussian_sigma(epsilon, delta, 3.0) == pytest.approx(3 * sigma, rel=1e-9)  # σ ∝ Δ


def test_analytic_sigma_known_value_and_the_classic_bound():
    # Balle & Wang's calibration for ε = 1, δ = 1e-5, Δ = 1: σ ≈ 3.73 (classic: 4.84)
    assert gaussian_sigma(1.0, 1e-5, 1.0) == pytest.approx(3.7306, abs=1e-3)
    for eps in (0.05, 0.3, 0.9):  # where the classic bound holds, it is an upper bound
        assert gaussian_sigma(eps, 1e-5, 1.0) < classic_gaussian_sigma(eps, 1e-5, 1.0)
    # at ε = 16 the classic formula is not valid: its σ leaks more than δ
    classic = classic_gaussian_sigma(16.0, 1e-5, 1.0)
    assert hockey_stick(16.0, classic, 1.0) > 1e-5 and gaussian_sigma(16.0, 1e-5, 1.0) > classic


@pytest.mark.parametrize("eps,delta", [(0, 1e-5), (-1, 1e-5), (math.inf, 1e-5), (math.nan, 1e-5),
                                       (1, 0), (1, 1)])
def test_settings_that_cannot_be_certified_are_refused(eps, delta):
    for calibrate in (lambda: gaussian_sigma(eps, delta, 1.0),
                      lambda: iteration_sigma(eps, delta, 1.0, 0.01, 1.0, 10)):
        with pytest.raises(ValueError):
            calibrate()


def test_rdp_conversion_bounds_the_exact_gaussian_and_is_close():
    """One noisy step from two points 2·C0 + 2·η·C1 apart is a Gaussian mechanism with that
    sensitivity: the Rényi accounting must give an ε at least the exact one, and not much
    more."""
    c0, lr, c1, sigma, delta = 1.0, 0.1, 1.0, 2.0, 1e-5
    rdp_eps = iteration_epsilon(c0, lr, c1, 1, sigma, delta)
    shift = 2 * c0 + 2 * lr * c1
    exact = gaussian_delta(rdp_eps, sigma, shift)  # the exact δ at the RDP's ε
    assert exact <= delta and rdp_eps < 1.5 * _exact_epsilon(sigma, shift, delta)
    assert iteration_rdp(c0, lr, c1, 1, sigma) == pytest.approx(shift**2 / (2 * sigma**2))


def _exact_epsilon(sigma: float, sensitivity: float, delta: float) -> float:
    lo, hi = 0.0, 100.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if gaussian_delta(mid, sigma, sensitivity) > delta else (lo, mid)
    return hi


@pytest.mark.parametrize("epsilon", [1.0, 4.0, 16.0])
def test_iteration_sigma_reaches_its_epsilon_and_is_least_at_t_c0_over_eta_c1(epsilon):
    sigma = iteration_sigma(epsilon, 1e-5, 1.0, 0.01, 1.0, 100)
    assert iteration_epsilon(1.0, 0.01, 1.0, 100, sigma, 1e-5) == pytest.approx(epsilon, rel=1e-6)
    assert iteration_epsilon(1.0, 0.01, 1.0, 100, 0.98 * sigma, 1e-5) > epsilon
    # σ ∝ (2·C0 + 2·η·T·C1)/sqrt(T): least at T = C0/(η·C1) = 100, by (2 + 2)/10 vs (2 + 0.5)/5
    for steps in (25, 400):
        assert iteration_sigma(epsilon, 1e-5, 1.0, 0.01, 1.0, steps) == pytest.approx(1.25 * sigma)
    # the start ball dominates: halving C0 (with η·T·C1 = 1) takes σ down by a quarter
    assert iteration_sigma(epsilon, 1e-5, 0.5, 0.01, 1.0, 100) == pytest.approx(0.75 * sigma)
    assert rdp_to_dp(0.0, 1e-5) == 0.0


def test_noise_comes_from_the_os_not_from_params():
    seeds = {shared_noise_seed(CPU) for _ in range(5)}
    assert len(seeds) == 5
    a, b = (torch.randn(1000, generator=noise_generator(CPU)) for _ in range(2))
    assert not torch.equal(a, b)
