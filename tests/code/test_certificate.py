"""The (ε, δ) certificate against hand-computed values, and ε = ∞ without noise."""

import math

import pytest

from components.certificate import make_certificate
from components.params import DecoupleParams

HASH = "ab" * 32


def test_noise_certificate_hand_computed():
    cfg = DecoupleParams(lr=0.01, max_steps=10, clip_norm=1.0,
                         noise={"epsilon": 1.0, "delta": 1e-5})
    cert = make_certificate(cfg, HASH, "decouple", keep_decoupled=0.0)
    # Δ = 0.01 · 10 · 1.0 = 0.1; σ = 0.1 · sqrt(2 ln(125000)) / 1 = 0.1 · 4.844806 = 0.4844806
    assert cert["sensitivity"] == pytest.approx(0.1)
    assert cert["sigma"] == pytest.approx(0.4844806, rel=1e-6)
    assert (cert["epsilon"], cert["delta"], cert["clip_norm"], cert["lr"], cert["steps"]) == \
        (1.0, 1e-5, 1.0, 0.01, 10)
    assert cert["forget_split_hash"] == HASH and cert["covers"] == "released model"
    assert "(1, 1e-05)-indistinguishable" in cert["statement"]


def test_bound_covers_only_decoupled_weights_when_retention_reads_the_forget_set():
    cfg = DecoupleParams(noise={"epsilon": 0.5, "delta": 1e-6})
    cert = make_certificate(cfg, HASH, "decouple", keep_decoupled=0.035)
    assert cert["covers"] == "decoupled weights only"
    assert "not for the released model" in cert["statement"]
    assert cert["sigma"] == pytest.approx(
        cfg.lr * cfg.max_steps * cfg.clip_norm * math.sqrt(2 * math.log(1.25e6)) / 0.5)


@pytest.mark.parametrize("method,noise", [("decouple", {}), ("neggrad_plus", {"epsilon": 1.0})])
def test_no_noise_no_bound(method, noise):
    cert = make_certificate(DecoupleParams(noise=noise), HASH, method, keep_decoupled=0.0)
    assert cert["epsilon"] == "inf" and cert["sigma"] == 0.0
    assert cert["statement"].startswith("No (ε, δ) bound is claimed")
