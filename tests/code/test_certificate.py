"""The (ε, δ) certificate, written from the run's records: which model file it covers, ε = ∞
wherever the released model is not covered, and what the bound compares."""

import pytest

from components.certificate import ascent_record, make_certificate
from components.methods.certified import privacy_record
from components.params import CertifiedParams, DecoupleParams
from components.privacy import gaussian_sigma, iteration_sigma

SPLIT, MODEL = "ab" * 32, "cd" * 32
PLAIN_RETENTION = {"steps": 80, "reads": ["retain"]}
KEEPING_RETENTION = {"steps": 80, "reads": ["retain", "forget"]}


def ascent(budget: int = 10, steps: int = 7, epsilon: float = 1.0) -> dict:
    """reports/decouple.json of a noisy ascent that stopped after `steps` of `budget`."""
    cfg = DecoupleParams(lr=0.01, max_steps=budget, clip_norm=1.0,
                         noise={"epsilon": epsilon, "delta": 1e-5})
    sigma = gaussian_sigma(epsilon, 1e-5, 0.01 * budget * 1.0)
    return {"method": "decouple", "steps": steps, **ascent_record(cfg, sigma, steps)}


def test_ascent_bound_is_stated_from_the_run_not_from_params():
    # decouple_literal's budget is 200 steps: Δ and σ must use it, not decouple's 10
    cert = make_certificate(ascent(budget=200, steps=131), PLAIN_RETENTION, SPLIT, MODEL)
    assert cert["budget"] == 200 and cert["steps"] == 131
    assert cert["sensitivity"] == pytest.approx(0.01 * 200 * 1.0)
    assert cert["sigma"] == pytest.approx(gaussian_sigma(1.0, 1e-5, 2.0))
    assert cert["covers"] == "released model" and (cert["epsilon"], cert["delta"]) == (1.0, 1e-5)
    assert cert["model_file"] == "models/unlearned.pt" and cert["model_sha256"] == MODEL
    assert "analytic" in cert["mechanism"] and cert["relation"].startswith("ascent update")
    # what it does not mean, in plain words
    assert "no unlearning certificate" in cert["statement"]
    assert "T = 200" in cert["statement"] and "131 taken" in cert["statement"]


@pytest.mark.parametrize("retention,why", [(KEEPING_RETENTION, "forget"),
                                           ({"steps": 80, "reads": ["retain", "start model"]},
                                            "start model")])
def test_released_model_gets_no_bound_when_retention_reads_more_than_the_retain_set(retention,
                                                                                    why):
    cert = make_certificate(ascent(), retention, SPLIT, MODEL)
    assert cert["covers"] == "decoupled model only"
    assert cert["epsilon"] == "inf" and cert["delta"] is None
    assert cert["decoupled"] == {"file": "models/decoupled.pt", "epsilon": 1.0, "delta": 1e-5}
    assert f"read {why}" in cert["statement"] and "gets no bound (ε = ∞)" in cert["statement"]


@pytest.mark.parametrize("decouple", [{"method": "decouple", "steps": 10},
                                      {"method": "neggrad_plus", "steps": 100}])
def test_no_noise_no_bound(decouple):
    cert = make_certificate(decouple, PLAIN_RETENTION, SPLIT, MODEL)
    assert cert["covers"] == "none" and cert["epsilon"] == "inf" and cert["sigma"] == 0.0
    assert cert["statement"].startswith("No (ε, δ) bound is claimed")


def test_certified_mode_covers_the_released_model_as_unlearning():
    cfg = CertifiedParams(epsilon=4.0, steps=50, lr=0.02, clip_norm=1.0, start_radius=2.0)
    sigma = iteration_sigma(4.0, 1e-5, 2.0, 0.02, 1.0, 50)
    record = {"method": "certified", "steps": 850, "privacy": privacy_record(cfg, sigma)}
    cert = make_certificate(record, {"steps": 0, "reads": []}, SPLIT, MODEL)
    assert cert["covers"] == "released model" and (cert["epsilon"], cert["delta"]) == (4.0, 1e-5)
    assert cert["sigma"] == sigma and cert["steps"] == 50 and cert["start_radius"] == 2.0
    assert cert["relation"].startswith("unlearning") and "never saw" in cert["statement"]
    assert MODEL[:12] in cert["statement"] and SPLIT[:12] in cert["statement"]
