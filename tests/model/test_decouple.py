"""Phase 1 of the seed method: λ calibration, the stop rule, clipping, noise, divergence."""

import pytest
import torch

from components.methods.decouple import calibrate_lambda, decouple
from components.models import parameter_group
from components.training import DivergenceError, JobContext, per_sample_loss
from tests.model.conftest import tiny_params

CPU = torch.device("cpu")


def quiet(**kw):
    return JobContext(log=lambda s: None, **kw)


def test_lambda_is_the_heldout_quantile(unlearn_data):
    losses = per_sample_loss(unlearn_data.original, *unlearn_data.heldout, CPU)
    lam = calibrate_lambda(unlearn_data.original, unlearn_data.heldout, 0.9, CPU)
    assert (losses <= lam).float().mean() == pytest.approx(0.9, abs=0.01)
    assert calibrate_lambda(unlearn_data.original, unlearn_data.heldout, 0.5, CPU) < lam


def test_ascent_stops_as_soon_as_the_forget_loss_reaches_lambda(fresh, unlearn_data):
    params = tiny_params(decouple={"lr": 0.05, "max_steps": 500, "probe_size": 100000})
    reports = []  # checkpoint_every=1: a report per step, with the loss before that step
    info = decouple(fresh, unlearn_data, params,
                    quiet(checkpoint_every=1, report=lambda m, s: reports.append(m)))
    assert info["reached"] and 0 < info["steps"] < 500
    forget_loss = per_sample_loss(fresh, *unlearn_data.forget, CPU).mean()
    assert forget_loss >= info["lambda"]  # the probe is the whole forget set here
    assert forget_loss == pytest.approx(info["forget_loss"], rel=1e-5)
    assert len(reports) == info["steps"]
    assert all(r["forget_loss"] < info["lambda"] for r in reports)  # not a step too many


def test_ascent_raises_the_forget_loss_more_than_the_retain_loss(fresh, unlearn_data):
    before_f = per_sample_loss(fresh, *unlearn_data.forget, CPU).mean()
    before_r = per_sample_loss(fresh, *unlearn_data.retain, CPU).mean()
    decouple(fresh, unlearn_data, tiny_params(decouple={"lr": 0.05}), quiet())
    gain_f = per_sample_loss(fresh, *unlearn_data.forget, CPU).mean() / before_f
    gain_r = per_sample_loss(fresh, *unlearn_data.retain, CPU).mean() / before_r
    assert gain_f > gain_r > 0


def test_clipping_bounds_every_step(fresh, unlearn_data):
    lr, clip = 0.05, 0.1
    params = tiny_params(decouple={"lr": lr, "clip_norm": clip, "max_steps": 5,
                                   "quantile": 0.999999})
    before = torch.cat([p.detach().flatten() for p in fresh.parameters()])
    info = decouple(fresh, unlearn_data, params, quiet())
    after = torch.cat([p.detach().flatten() for p in fresh.parameters()])
    assert info["steps"] == 5 and not info["reached"]
    assert (after - before).norm() <= lr * clip * 5 + 1e-6


def test_only_the_chosen_group_moves(fresh, unlearn_data):
    dec_before = [p.detach().clone() for p in parameter_group(fresh, "decoder")]
    decouple(fresh, unlearn_data, tiny_params(decouple={"params": "encoder", "lr": 0.05}), quiet())
    for a, b in zip(dec_before, parameter_group(fresh, "decoder"), strict=True):
        assert torch.equal(a, b)


def test_budget_exhausted_is_reported_loudly(fresh, unlearn_data):
    lines = []
    info = decouple(fresh, unlearn_data, tiny_params(decouple={"lr": 1e-6, "max_steps": 3}),
                    JobContext(log=lines.append))
    assert not info["reached"] and info["steps"] == 3
    assert any("WARNING" in line and "max_steps" in line for line in lines)


def test_noise_is_calibrated_and_added(fresh, unlearn_data):
    params = tiny_params(decouple={"lr": 0.01, "max_steps": 10, "clip_norm": 1.0,
                                   "noise": {"epsilon": 1.0, "delta": 1e-5}})
    info = decouple(fresh, unlearn_data, params, quiet())
    assert info["sigma"] == pytest.approx(0.01 * 10 * 1.0 * 4.844806, rel=1e-5)


def test_divergence_is_detected(fresh, unlearn_data):
    with torch.no_grad():
        next(fresh.parameters()).fill_(float("nan"))
    with pytest.raises(DivergenceError, match="decoupling .* diverged at step 0"):
        decouple(fresh, unlearn_data, tiny_params(), quiet())
