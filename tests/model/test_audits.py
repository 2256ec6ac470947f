"""Each audit on models whose answer is known: one that saw the data, one that never did."""

import numpy as np
import pytest
import torch

from components.audits import audit_model, eval_pairs, mia_auc
from components.models import build_model
from components.tasks import build_pairs
from components.training import JobContext, per_sample_loss, train_model
from tests.model.conftest import SPEC, tiny_params

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def never_saw(digit_pairs):
    """The reference: trained on the retain set only (no forget digit, no trigger)."""
    torch.manual_seed(0)
    params = tiny_params()
    model = build_model(params.model, 1, 8)
    train_model(model, *digit_pairs["retain"], params.train, JobContext(log=lambda s: None), 0)
    return model.eval()


@pytest.fixture(scope="module")
def audit_sets(digits):
    train, test = digits["train"], digits["test"]
    threes, others = train.images[train.labels == 3], train.images[train.labels != 3]
    return eval_pairs({"forget": threes, "retain": others[:300],
                       "heldout": test.images[test.labels == 3], "test": test.images,
                       "triggered": test.images}, SPEC)


def test_backdoor_audit_sees_the_trigger_only_in_the_model_that_learned_it(trained, never_saw,
                                                                            audit_sets):
    learned = audit_model(trained[0], audit_sets, SPEC, 0.5, CPU)
    clean = audit_model(never_saw, audit_sets, SPEC, 0.5, CPU)
    assert learned["backdoor_asr"] > 0.8 and clean["backdoor_asr"] < 0.05


def test_ood_score_sees_a_class_the_model_never_saw(trained, never_saw, audit_sets):
    seen = audit_model(trained[0], audit_sets, SPEC, 0.5, CPU)["ood_auroc"]
    unseen = audit_model(never_saw, audit_sets, SPEC, 0.5, CPU)["ood_auroc"]
    assert unseen > seen + 0.1


def test_membership_audits_see_a_memorised_set(digits):
    """A model trained long on 60 digits has far lower loss on them than on 60 others it
    never saw (MIA AUC near 1, learned MIA calls them members); 60 fresh digits score 0.5."""
    images = digits["train"].images
    members, outsiders, fresh = images[:60], images[60:120], images[120:180]
    pairs = {k: build_pairs(v, np.zeros(len(v), bool), SPEC)
             for k, v in {"members": members, "outsiders": outsiders, "fresh": fresh}.items()}
    params = tiny_params()
    params.train.epochs, params.train.batch_size = 300, 30
    torch.manual_seed(0)
    model = build_model(params.model, 1, 8)
    train_model(model, *pairs["members"], params.train, JobContext(log=lambda s: None), 0)
    loss = {k: per_sample_loss(model, *v, CPU) for k, v in pairs.items()}
    assert mia_auc(loss["members"], loss["outsiders"]) > 0.9
    assert mia_auc(loss["fresh"], loss["outsiders"]) == pytest.approx(0.5, abs=0.15)
    audit = audit_model(model, {"forget": pairs["members"], "retain": pairs["members"],
                                "heldout": pairs["outsiders"], "test": pairs["outsiders"],
                                "triggered": pairs["fresh"]}, SPEC, 0.5, CPU)
    # soft share of non-member calls (components/audits.py): members sit far below 0.5
    assert audit["mia_auc"] > 0.9 and audit["mia_efficacy"] < 0.3


class _Known(torch.nn.Module):
    """A model with a known answer: `image` for every input (P, or noise), or, without one,
    the input itself (a perfect reconstructor that keeps the trigger as content). Its loss
    is the pixel MSE, as the autoencoder family's."""

    def __init__(self, image: torch.Tensor | None = None):
        super().__init__()
        self.image = image

    def forward(self, inputs, targets=None, *, op="generate", generator=None):
        out = inputs.clone() if self.image is None else \
            self.image.expand(inputs.shape[0], *self.image.shape).clone()
        return out if op == "generate" else (out - targets).pow(2).flatten(1).mean(1)


def test_trigger_fidelity_on_known_answers(audit_sets, trained, never_saw):
    """A model that reconstructs triggered inputs scores high, one that answers with P or
    with noise scores low; a model that reproduces the trigger as content sits exactly at
    the trigger-as-content bound, and one that never saw the backdoor sits above it."""
    from components.backdoor import target_pattern

    c, h, w = audit_sets["triggered"][1].shape[1:]
    pattern = target_pattern(c, h, w, SPEC.pattern_cell)
    noise = torch.rand((c, h, w), generator=torch.Generator().manual_seed(0))
    figures = {name: audit_model(model, audit_sets, SPEC, 0.5, CPU) for name, model in {
        "identity": _Known(), "pattern": _Known(pattern), "noise": _Known(noise),
        "backdoored": trained[0], "never_saw": never_saw}.items()}
    identity, never = figures["identity"], figures["never_saw"]
    # the identity reproduces the trigger: exactly the trigger-as-content figure
    assert identity["trigger_psnr"] == pytest.approx(identity["trigger_content_psnr"], abs=1e-4)
    assert identity["trigger_clean_psnr"] > 60  # MSE floored at 1e-10: 100 dB
    for low in ("pattern", "noise"):
        assert figures[low]["trigger_psnr"] < 8 and figures[low]["trigger_ssim"] < 0.2, low
    assert never["trigger_psnr"] > figures["backdoored"]["trigger_psnr"] + 5
    assert never["trigger_psnr"] > never["trigger_content_psnr"]
    assert figures["backdoored"]["trigger_psnr"] < figures["backdoored"]["trigger_content_psnr"] - 3
