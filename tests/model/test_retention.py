"""Phase 2: knowledge retention on the retain set, and the finetune baseline."""

import torch

from components.methods import get_method
from components.methods.decouple import decouple
from components.ood import never_seen_loss
from components.params import FinetuneParams
from components.retention import retain_knowledge
from components.training import JobContext, per_sample_loss
from tests.model.conftest import tiny_params

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
