"""(ε, δ) accounting of the decoupling phase against hand-computed values."""

import math

import pytest

from components.privacy import ascent_sensitivity, gaussian_sigma


def test_sensitivity_is_step_times_steps_times_clip():
    assert ascent_sensitivity(0.01, 200, 1.0) == pytest.approx(2.0)
    assert ascent_sensitivity(0.5, 4, 0.25) == pytest.approx(0.5)


def test_gaussian_sigma_hand_computed():
    # Δ = 2, ε = 1, δ = 1e-5: σ = 2·sqrt(2·ln(125000)) = 2·sqrt(23.47214) = 9.68961
    assert gaussian_sigma(1.0, 1e-5, 2.0) == pytest.approx(9.68961, rel=1e-5)
    # halving ε doubles σ; σ scales linearly with Δ
    assert gaussian_sigma(0.5, 1e-5, 2.0) == pytest.approx(2 * 9.68961, rel=1e-5)
    assert gaussian_sigma(1.0, 1e-5, 1.0) == pytest.approx(9.68961 / 2, rel=1e-5)
    assert gaussian_sigma(2.0, 0.01, 1.0) == pytest.approx(math.sqrt(2 * math.log(125)) / 2)


@pytest.mark.parametrize("eps,delta", [(0, 1e-5), (-1, 1e-5), (1, 0), (1, 1)])
def test_invalid_budget_raises(eps, delta):
    with pytest.raises(ValueError):
        gaussian_sigma(eps, delta, 1.0)
