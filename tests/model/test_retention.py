"""Phase 2: knowledge retention on the retain set, and the finetune baseline."""

import copy

import torch

from components.audits import audit_model, eval_pairs
from components.methods import get_method, run_method
from components.methods.decouple import decouple
from components.ood import never_seen_loss
from components.params import FinetuneParams, TrainParams
from components.retention import retain_knowledge, retention_steps, undone_share
from components.training import JobContext, per_sample_loss
from tests.model.conftest import SPEC, tiny_params

CPU = torch.device("cpu")


def test_retention_restores_retain_quality_after_decoupling(fresh, unlearn_data):
    quiet = JobContext(log=lambda s: None)
    base = per_sample_loss(fresh, *unlearn_data.retain, CPU).mean()
    decouple(fresh, unlearn_data, tiny_params(decouple={"lr": 0.05}), quiet)
    damaged = per_sample_loss(fresh, *unlearn_data.retain, CPU).mean()
    info = retain_knowledge(fresh, unlearn_data.original, unlearn_data.retain,
                            FinetuneParams(steps=60, lr=0.003, batch_size=64), quiet, seed=0)
    restored = per_sample_loss(fresh, *unlearn_data.retain, CPU).mean()
    assert info["steps"] == 60
    assert damaged > base and restored < damaged
    assert restored < base * 1.5


def test_distillation_pulls_outputs_towards_the_original(fresh, unlearn_data):
    quiet = JobContext(log=lambda s: None)
    x = unlearn_data.retain[0][:200]
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    results = {}
    for distill in (0.0, 50.0):
        model = type(fresh)(1, 8, [8, 16], 16)
        model.load_state_dict(fresh.state_dict())
        retain_knowledge(model, unlearn_data.original, unlearn_data.retain,
                         FinetuneParams(steps=20, lr=0.001, distill=distill), quiet, seed=0)
        with torch.no_grad():
            results[distill] = (model(x) - unlearn_data.original(x)).pow(2).mean()
    assert results[50.0] < results[0.0]


def test_finetune_method_skips_forgetting(fresh, unlearn_data):
    before = [p.detach().clone() for p in fresh.parameters()]
    info = get_method("finetune").forget(fresh, unlearn_data, tiny_params(),
                                         JobContext(log=lambda s: None))
    assert info["steps"] == 0 and get_method("finetune").retention
    assert all(torch.equal(a, b) for a, b in zip(before, fresh.parameters(), strict=True))


def test_keeping_decoupled_holds_forget_pairs_at_their_lambda(fresh, unlearn_data):
    """Plain retention lets the forget loss fall back; the hinge keeps it at λ_i."""
    quiet = JobContext(log=lambda s: None)
    lam, _ = never_seen_loss(unlearn_data.original, unlearn_data.forget, unlearn_data.heldout,
                             0.5, CPU)
    cfg = FinetuneParams(steps=60, lr=0.003, batch_size=64, keep_decoupled=1.0)
    shortfall = {}
    for keep in (False, True):
        model = type(fresh)(1, 8, [8, 16], 16)
        model.load_state_dict(fresh.state_dict())
        kw = {"forget": unlearn_data.forget, "thresholds": lam} if keep else {}
        retain_knowledge(model, unlearn_data.original, unlearn_data.retain, cfg, quiet, 0, **kw)
        losses = per_sample_loss(model, *unlearn_data.forget, CPU)
        shortfall[keep] = float(torch.relu(lam - losses).mean())
    assert shortfall[True] < 0.5 * shortfall[False]


def test_transplanting_the_memorised_residual_forgets_the_trigger_instead_of_suppressing_it(
        trained, unlearn_data, digits):
    """With the hinge alone the backdoor's ASR is 0 but triggered inputs come out broken:
    below the fidelity a model that reproduces the trigger as content would have. Training
    on retain images that carry the memorised residual (the trigger, found from the forget
    set alone) brings triggered inputs back to images (measured: 10.9 -> 15.4 dB)."""
    test = digits["test"].images
    sets = eval_pairs({"forget": test[:50], "retain": test[:50], "heldout": test[:50],
                       "test": test[:200], "triggered": test}, SPEC)
    figures = {}
    for tau in (0.0, 0.3):
        model = copy.deepcopy(trained[0])
        params = tiny_params(method="decouple",
                             finetune={"transplant": tau, "steps": 120, "lr": 0.003,
                                       "budget": None})
        run_method(model, unlearn_data, params, JobContext(log=lambda s: None))
        figures[tau] = audit_model(model, sets, SPEC, 0.5, CPU)
    suppressed, forgotten = figures[0.0], figures[0.3]
    assert suppressed["backdoor_asr"] == forgotten["backdoor_asr"] == 0.0
    assert suppressed["trigger_psnr"] < suppressed["trigger_content_psnr"] + 0.5
    assert forgotten["trigger_psnr"] > forgotten["trigger_content_psnr"] + 2
    assert forgotten["trigger_psnr"] > suppressed["trigger_psnr"] + 3


def test_the_hinge_weighs_every_pair_relative_to_its_own_lambda():
    """A clean pair (λ 0.01) halfway back counts as much beside a poisoned pair (λ 0.3) as
    alone: 0.5. Normalised by the batch's Σλ it counted 0.016 beside it and 0.5 alone, so
    the same γ meant a sixth as much with a backdoor in the batch as without."""
    lam = torch.tensor([0.3, 0.01])
    losses = torch.tensor([0.3, 0.005])  # the poisoned pair at its λ, the clean one halfway
    assert float(undone_share(losses, lam)) == 0.25
    assert float(undone_share(losses[1:], lam[1:])) == 0.5
    assert float(undone_share(lam + 0.1, lam)) == 0.0  # above λ: nothing to keep


def test_retention_budget_caps_steps_at_a_share_of_retraining(fresh, unlearn_data):
    """Retraining 1,000 pairs for 5 epochs is 5,000 sample gradients; 10 % of it at 128 + 32
    pairs a step is 3 steps, and a step budget below that stays as given."""
    train = TrainParams(epochs=5, min_steps=0)
    cfg = FinetuneParams(steps=120, budget=0.1, batch_size=128, forget_batch_size=32)
    assert retention_steps(cfg, 1000, train, keep=True) == 3
    assert retention_steps(cfg, 1000, train, keep=False) == 3  # 500 // 128
    assert retention_steps(cfg, 100_000, train, keep=True) == 120
    assert retention_steps(cfg, 1000, None, keep=True) == 120
    assert retention_steps(cfg.model_copy(update={"budget": None}), 1000, train, True) == 120
    # min_steps lengthens retraining on small sets, and the budget with it
    assert retention_steps(cfg, 1000, TrainParams(epochs=5, min_steps=1000), True) == 78
    quiet = JobContext(log=lambda s: None)
    info = retain_knowledge(fresh, unlearn_data.original, unlearn_data.retain,
                            FinetuneParams(steps=60, budget=0.01, batch_size=64), quiet, seed=0,
                            retrain=TrainParams(epochs=30, min_steps=0))
    n = len(unlearn_data.retain[0])
    assert info["steps"] == int(0.01 * 30 * n / 64) < 60
