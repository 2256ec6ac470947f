"""The certified mode: it reads the retain set only, starts inside the ball it certifies,
adds the noise its certificate states, and the finishing phase makes a usable model."""

import math

import pytest
import torch
from scipy import stats

from components.methods import UnlearnData, get_method
from components.methods.certified import certified, public_centre
from components.models import build_model
from components.privacy import iteration_epsilon, iteration_sigma
from components.training import JobContext, per_sample_loss
from tests.model.conftest import tiny_params

CPU = torch.device("cpu")


def retain_only(unlearn_data):
    """The forget set, the held-out set and the original are not there: touching them fails."""
    return UnlearnData(forget=None, retain=unlearn_data.retain, heldout=None, original=None)


def flat(state):
    return torch.cat([v.flatten() for v in state.values()])


def test_noisy_steps_add_the_noise_the_certificate_states(fresh, unlearn_data):
    cfg = {"epsilon": 4.0, "steps": 3, "lr": 0.01, "clip_norm": 1.0, "start_radius": 1.0,
           "finish_steps": 0}
    states = []
    info = certified(fresh, retain_only(unlearn_data), tiny_params(certified=cfg),
                     JobContext(log=lambda s: None, checkpoint_every=1,
                                report=lambda m, s: states.append(flat(s["model"]).clone())))
    record = info["privacy"]
    assert record["sigma"] == iteration_sigma(4.0, 1e-5, 1.0, 0.01, 1.0, 3)
    assert iteration_epsilon(1.0, 0.01, 1.0, 3, record["sigma"], 1e-5) == pytest.approx(4.0)
    assert record["reads"] == ["retain"] and info["steps"] == 3
    # step 2 = step 1 - η·clip(g) + N(0, σ²): ||η·clip(g)|| ≤ 0.01 is nothing next to the noise
    step = (states[1] - states[0]).numpy()
    assert step.std() == pytest.approx(record["sigma"], rel=0.05)
    assert stats.kstest(step / record["sigma"], "norm").pvalue > 1e-3


def test_released_weights_lie_in_the_certified_ball_and_the_noise_is_fresh(trained,
                                                                             unlearn_data):
    """Without finishing steps the release is the projected chain: within C0 of the public
    centre; two runs with the same params differ (the noise is the OS's)."""
    params = tiny_params(certified={"epsilon": 1.0, "steps": 5, "start_radius": 0.5,
                                    "finish_steps": 0})
    shape = tuple(unlearn_data.retain[0].shape[1:])
    centre = torch.cat([c.flatten() for c in public_centre(params, shape, CPU)])
    outs = []
    for _ in range(2):
        model = build_model(params.model, shape[0], shape[1])
        model.load_state_dict(trained[0].state_dict())
        certified(model, retain_only(unlearn_data), params, JobContext(log=lambda s: None))
        outs.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        assert float((outs[-1] - centre).norm()) <= 0.5 + 1e-4
    assert not torch.equal(outs[0], outs[1])


def test_finishing_steps_make_a_usable_model(fresh, unlearn_data):
    params = tiny_params(method="certified",
                         certified={"epsilon": 16.0, "steps": 20, "finish_steps": 150,
                                    "finish_lr": 3e-3})
    shape = tuple(unlearn_data.retain[0].shape[1:])
    centre = build_model(params.model, shape[0], shape[1])
    for p, c in zip(centre.parameters(), public_centre(params, shape, CPU), strict=True):
        p.data.copy_(c)
    info = get_method("certified").forget(fresh, retain_only(unlearn_data), params,
                                          JobContext(log=lambda s: None))
    assert math.isfinite(info["final_loss"]) and info["steps"] == 170
    retain = unlearn_data.retain
    after = per_sample_loss(fresh, *retain, CPU).mean()
    assert after < 0.5 * per_sample_loss(centre, *retain, CPU).mean()
