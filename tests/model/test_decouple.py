"""Phase 1 of the seed method: λ calibration, the stop rules, clipping, noise, divergence."""

import copy
from dataclasses import replace

import pytest
import torch
from scipy import stats

from components.methods.decouple import decouple, decouple_literal
from components.models import parameter_group
from components.ood import heldout_quantile, memorised_residual, nearest, never_seen_loss
from components.privacy import gaussian_sigma
from components.training import DivergenceError, JobContext, per_sample_loss
from tests.model.conftest import tiny_params

CPU = torch.device("cpu")
LITERAL = {"threshold": "quantile", "stop": "mean", "check_every": 1}


def quiet(**kw):
    return JobContext(log=lambda s: None, **kw)


def test_literal_lambda_is_the_heldout_quantile(unlearn_data):
    losses = per_sample_loss(unlearn_data.original, *unlearn_data.heldout, CPU)
    lam = heldout_quantile(unlearn_data.original, unlearn_data.heldout, 0.9, CPU)
    assert (losses <= lam).float().mean() == pytest.approx(0.9, abs=0.01)
    assert heldout_quantile(unlearn_data.original, unlearn_data.heldout, 0.5, CPU) < lam


def test_nearest_finds_the_closest_other_input():
    pool = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0]]).reshape(3, 1, 1, 2)
    idx, dist = nearest(pool, pool, exclude_self=True)
    assert idx.tolist() == [1, 0, 0]
    assert dist[0] == pytest.approx(1 / 2**0.5)  # RMS over the 2 "pixels"


def test_pair_thresholds_see_poisoned_pairs_as_far_from_never_seen(unlearn_data, digit_pairs):
    forget = unlearn_data.forget
    poisoned = (forget[1] - forget[0]).flatten(1).abs().amax(1) > 0.5
    lam, fit = never_seen_loss(unlearn_data.original, forget, unlearn_data.heldout, 0.5, CPU)
    assert fit > 0 and lam.shape == (len(forget[0]),)
    # a model that never saw (trigger -> pattern) pairs reconstructs the input: huge loss;
    # a never-seen clean digit costs about what a held-out digit costs
    heldout_loss = per_sample_loss(unlearn_data.original, *unlearn_data.heldout, CPU)
    assert lam[poisoned].mean() > 5 * lam[~poisoned].mean()
    assert float(lam[~poisoned].mean()) == pytest.approx(float(heldout_loss.mean()), rel=0.6)


def test_literal_ascent_stops_as_soon_as_the_mean_forget_loss_reaches_lambda(fresh, unlearn_data):
    params = tiny_params(decouple={**LITERAL, "lr": 0.05, "probe_size": 100000},
                         decouple_literal={"quantile": 0.95, "max_steps": 500})
    reports = []  # checkpoint_every=1: a report per step, with the loss before that step
    info = decouple_literal(fresh, unlearn_data, params,
                            quiet(checkpoint_every=1, report=lambda m, s: reports.append(m)))
    assert info["reached"] and 0 < info["steps"] < 500
    forget_loss = per_sample_loss(fresh, *unlearn_data.forget, CPU).mean()
    assert forget_loss >= info["lambda"]  # the probe is the whole forget set here
    assert forget_loss == pytest.approx(info["forget_loss"], rel=1e-5)
    assert len(reports) == info["steps"]
    assert all(r["forget_loss"] < info["lambda"] for r in reports)  # not a step too many


def test_per_sample_rule_stops_once_every_sample_is_at_its_lambda(fresh, unlearn_data):
    # the hardest clean forget digits and λ = the 1 % held-out quantile: every forget sample
    # is already above its λ, so nothing moves
    losses = per_sample_loss(fresh, *unlearn_data.forget, CPU)
    hard = losses >= torch.quantile(losses, 0.5)
    data = replace(unlearn_data, forget=(unlearn_data.forget[0][hard],
                                         unlearn_data.forget[1][hard]))
    params = tiny_params(decouple={"threshold": "quantile", "quantile": 0.01, "stop": "sample"})
    before = [p.detach().clone() for p in fresh.parameters()]
    info = decouple(fresh, data, params, quiet())
    assert info["reached"] and info["steps"] == 0 and info["below"] == 0
    assert all(torch.equal(a, b) for a, b in zip(before, fresh.parameters(), strict=True))
    # λ above every sample: the ascent runs, and reports how many are still below
    params = tiny_params(decouple={"threshold": "quantile", "quantile": 0.999, "stop": "sample",
                                   "max_steps": 10, "lr": 0.01})
    info = decouple(fresh, data, params, quiet())
    assert info["steps"] == 10 and not info["reached"] and 0 < info["below"] <= 1


def test_ascent_raises_the_forget_loss_more_than_the_retain_loss(fresh, unlearn_data):
    before_f = per_sample_loss(fresh, *unlearn_data.forget, CPU).mean()
    before_r = per_sample_loss(fresh, *unlearn_data.retain, CPU).mean()
    decouple(fresh, unlearn_data, tiny_params(decouple={"lr": 0.05}), quiet())
    gain_f = per_sample_loss(fresh, *unlearn_data.forget, CPU).mean() / before_f
    gain_r = per_sample_loss(fresh, *unlearn_data.retain, CPU).mean() / before_r
    assert gain_f > gain_r > 0


def test_clipping_bounds_every_step(fresh, unlearn_data):
    lr, clip = 0.05, 0.1
    params = tiny_params(decouple={**LITERAL, "lr": lr, "clip_norm": clip},
                         decouple_literal={"quantile": 0.999999, "max_steps": 5})
    before = torch.cat([p.detach().flatten() for p in fresh.parameters()])
    info = decouple_literal(fresh, unlearn_data, params, quiet())
    after = torch.cat([p.detach().flatten() for p in fresh.parameters()])
    assert info["steps"] == 5 and not info["reached"]
    assert (after - before).norm() <= lr * clip * 5 + 1e-6


def test_only_the_chosen_group_moves(fresh, unlearn_data):
    dec_before = [p.detach().clone() for p in parameter_group(fresh, "decoder")]
    decouple(fresh, unlearn_data, tiny_params(decouple={"params": "encoder", "lr": 0.05}), quiet())
    for a, b in zip(dec_before, parameter_group(fresh, "decoder"), strict=True):
        assert torch.equal(a, b)


def test_budget_exhausted_is_reported_loudly_when_nothing_continues(fresh, unlearn_data):
    lines = []
    params = tiny_params(decouple={**LITERAL, "lr": 1e-6},
                         decouple_literal={"max_steps": 3})
    info = decouple_literal(fresh, unlearn_data, params, JobContext(log=lines.append))
    assert not info["reached"] and info["steps"] == 3
    assert any("WARNING" in line and "max_steps" in line for line in lines)


def flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_the_certificate_record_matches_the_noise_the_run_applied(trained, unlearn_data):
    """The same ascent twice, without and with noise (the ascent itself is deterministic):
    the difference is the noise alone, N(0, σ²) with the recorded σ; the ascent moved the
    weights by at most the recorded Δ; and the same params give different noise."""
    start = flat(trained[0])
    runs = {}
    for name, noise in (("plain", {}), ("noisy", {"epsilon": 1.0}), ("again", {"epsilon": 1.0})):
        model = copy.deepcopy(trained[0])
        params = tiny_params(decouple={"lr": 0.01, "max_steps": 10, "clip_norm": 1.0,
                                       "noise": noise})
        runs[name] = (decouple(model, unlearn_data, params, quiet()), flat(model))
    record = runs["noisy"][0]["privacy"]
    # Δ = η·T·C with the budget T, σ from the analytic Gaussian mechanism at (1, 1e-5)
    assert record["sensitivity"] == pytest.approx(0.01 * 10 * 1.0)
    assert record["sigma"] == pytest.approx(gaussian_sigma(1.0, 1e-5, 0.1))
    assert record["steps"] == runs["plain"][0]["steps"] and record["budget"] == 10
    assert float((runs["plain"][1] - start).norm()) <= record["sensitivity"] + 1e-6
    noise = (runs["noisy"][1] - runs["plain"][1]).numpy()
    assert noise.std() == pytest.approx(record["sigma"], rel=0.05)
    assert abs(noise.mean()) < 4 * record["sigma"] / len(noise) ** 0.5
    assert stats.kstest(noise / record["sigma"], "norm").pvalue > 1e-3
    assert not torch.equal(runs["noisy"][1], runs["again"][1])  # fresh noise every run


def test_divergence_is_detected(fresh, unlearn_data):
    with torch.no_grad():
        next(fresh.parameters()).fill_(float("nan"))
    with pytest.raises(DivergenceError, match="decoupling .* diverged at step 0"):
        decouple(fresh, unlearn_data, tiny_params(), quiet())


def test_memorised_residual_is_the_trigger_found_without_knowing_it(unlearn_data, trained):
    """The poisoned threes are the memorised pairs (λ_i >= 10 x their loss under the
    original) and what they share beyond their never-seen neighbours is the 2x2 trigger in
    the bottom-right corner; nothing else survives the coherence test. (Of the four trigger
    pixels, (6, 6) often holds the foot of a 3 itself: there the residuals disagree.)"""
    forget = unlearn_data.forget
    poisoned = (forget[1] - forget[0]).flatten(1).abs().amax(1) > 0.5
    lam, _ = never_seen_loss(unlearn_data.original, forget, unlearn_data.heldout, 0.5, CPU)
    residual, found = memorised_residual(unlearn_data.original, forget, unlearn_data.heldout,
                                         lam, CPU)
    assert found["memorised"] == int(poisoned.sum())
    trigger = torch.zeros(1, 8, 8, dtype=torch.bool)
    trigger[..., 6:, 6:] = True
    assert residual is not None and bool((residual[~trigger] == 0).all())
    kept = residual[trigger][residual[trigger] != 0]
    assert found["coherent_pixels"] == len(kept) >= 3
    assert float(kept.min()) > 0.5  # a white square on mostly dark corners


def test_no_memorised_residual_when_nothing_is_memorised(unlearn_data):
    """Clean forget pairs (ordinary deletion requests): nothing to transplant."""
    forget = unlearn_data.forget
    clean = (forget[1] - forget[0]).flatten(1).abs().amax(1) <= 0.5
    pairs = (forget[0][clean], forget[1][clean])
    lam, _ = never_seen_loss(unlearn_data.original, pairs, unlearn_data.heldout, 0.5, CPU)
    residual, found = memorised_residual(unlearn_data.original, pairs, unlearn_data.heldout,
                                         lam, CPU)
    assert residual is None and found["memorised"] < 2
