"""Each baseline, on the tiny digits model, for the property that defines it."""

import pytest
import torch

from components.methods import METHODS, get_method
from components.methods.salun import saliency_mask
from components.models import parameter_group, unwrap
from components.training import JobContext, per_sample_loss
from tests.model.conftest import tiny_params

CPU = torch.device("cpu")
QUIET = JobContext(log=lambda s: None)


def losses(model, data):
    return (per_sample_loss(model, *data.forget, CPU).mean(),
            per_sample_loss(model, *data.retain, CPU).mean())


def snapshot(params):
    return [p.detach().clone() for p in params]


def unchanged(before, params):
    return all(torch.equal(a, b) for a, b in zip(before, params, strict=True))


def test_registry_lists_every_method_with_one_params_block():
    expected = {"decouple", "decouple_literal", "li2024", "gradient_ascent", "neggrad_plus",
                "random_encoder", "retain_label", "finetune", "salun", "scrub", "retrain",
                "certified"}
    assert set(METHODS) == expected
    blocks = tiny_params().unlearn.model_dump()
    assert expected - {"finetune"} <= blocks.keys() and "finetune" in blocks
    with pytest.raises(ValueError, match="unknown unlearn.method 'nope'"):
        get_method("nope")


def test_gradient_ascent_raises_the_forget_loss(fresh, unlearn_data):
    f0, _ = losses(fresh, unlearn_data)
    params = tiny_params(gradient_ascent={"lr": 0.1, "steps": 25})
    info = get_method("gradient_ascent").forget(fresh, unlearn_data, params, QUIET)
    f1, _ = losses(fresh, unlearn_data)
    assert info["steps"] == 25 and f1 > 1.5 * f0


def test_neggrad_plus_forgets_more_than_it_loses_on_retain(fresh, unlearn_data):
    f0, r0 = losses(fresh, unlearn_data)
    params = tiny_params(neggrad_plus={"beta": 0.9, "steps": 60})
    get_method("neggrad_plus").forget(fresh, unlearn_data, params, QUIET)
    f1, r1 = losses(fresh, unlearn_data)
    assert f1 / f0 > r1 / r0 and f1 > f0


def test_li2024_trains_only_the_encoder_towards_noise_embeddings(fresh, unlearn_data):
    decoder = snapshot(parameter_group(fresh, "decoder"))
    enc, teacher = unwrap(fresh).encoder, unwrap(unlearn_data.original).encoder
    x_f = unlearn_data.forget[0][:200]
    with torch.no_grad():
        before = (enc(x_f) - teacher(x_f)).pow(2).mean()
    get_method("li2024").forget(fresh, unlearn_data, tiny_params(li2024={"alpha_f": 1.0}), QUIET)
    with torch.no_grad():
        after = (enc(x_f) - teacher(x_f)).pow(2).mean()
    assert unchanged(decoder, parameter_group(fresh, "decoder"))
    assert after > before + 1e-4  # forget embeddings left the original's


def test_random_encoder_trains_only_the_encoder(fresh, unlearn_data):
    decoder = snapshot(parameter_group(fresh, "decoder"))
    encoder = snapshot(parameter_group(fresh, "encoder"))
    f0, _ = losses(fresh, unlearn_data)
    get_method("random_encoder").forget(fresh, unlearn_data, tiny_params(), QUIET)
    assert unchanged(decoder, parameter_group(fresh, "decoder"))
    assert not unchanged(encoder, parameter_group(fresh, "encoder"))
    assert losses(fresh, unlearn_data)[0] > f0


def test_retain_label_maps_forget_inputs_elsewhere(fresh, unlearn_data):
    f0, r0 = losses(fresh, unlearn_data)
    get_method("retain_label").forget(fresh, unlearn_data, tiny_params(), QUIET)
    f1, r1 = losses(fresh, unlearn_data)
    assert f1 > 1.5 * f0 and r1 < 2 * r0


def test_salun_updates_only_masked_weights(fresh, unlearn_data):
    masks = saliency_mask(fresh, unlearn_data.forget, 0.3, CPU)
    share = sum(m.sum() for m in masks) / sum(m.numel() for m in masks)
    assert float(share) == pytest.approx(0.3, abs=0.01)
    before = snapshot(fresh.parameters())
    info = get_method("salun").forget(fresh, unlearn_data, tiny_params(salun={"sparsity": 0.3}),
                                      QUIET)
    assert info["masked_share"] == pytest.approx(float(share))
    for b, p, m in zip(before, fresh.parameters(), masks, strict=True):
        assert torch.equal(b[~m], p.detach()[~m])  # outside the mask: untouched
    assert any(not torch.equal(b[m], p.detach()[m])
               for b, p, m in zip(before, fresh.parameters(), masks, strict=True))


def test_scrub_moves_away_from_the_teacher_on_forget_only(fresh, unlearn_data):
    teacher = unlearn_data.original
    x_f, x_r = unlearn_data.forget[0][:200], unlearn_data.retain[0][:200]
    get_method("scrub").forget(fresh, unlearn_data,
                               tiny_params(scrub={"steps": 40, "max_steps": 20}), QUIET)
    with torch.no_grad():
        dist_f = (fresh(x_f) - teacher(x_f)).pow(2).mean()
        dist_r = (fresh(x_r) - teacher(x_r)).pow(2).mean()
    assert dist_f > 2 * dist_r


def test_retrain_forgets_the_starting_weights(trained, unlearn_data):
    params = tiny_params(retrain={"epochs": 2})
    a, b = type(trained[0])(1, 8, [8, 16], 16), type(trained[0])(1, 8, [8, 16], 16)
    a.load_state_dict(trained[0].state_dict())  # one starts from the original, one at random
    for model in (a, b):
        get_method("retrain").forget(model, unlearn_data, params, QUIET)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(pa, pb)
