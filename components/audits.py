"""Audits of forgetting: membership inference, out-of-distribution score, backdoor ASR.

All three compare per-sample losses; each figure means little alone and is read against
the model retrained without the forget set (DESIGN.md §2.3).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from components.backdoor import attack_success_rate, target_pattern
from components.tasks import TaskSpec, add_trigger, apply_task
from components.training import per_sample_loss, predict


def _auc(positive: np.ndarray, negative: np.ndarray) -> float:
    labels = np.r_[np.ones(len(positive)), np.zeros(len(negative))]
    return float(roc_auc_score(labels, np.r_[positive, negative]))


def mia_auc(forget_losses: torch.Tensor, heldout_losses: torch.Tensor) -> float:
    """Loss-threshold membership inference: AUC of "member" for forget vs held-out.

    A lower loss means "member", so the score is -loss. 0.5: no membership signal.
    """
    return _auc(-forget_losses.numpy(), -heldout_losses.numpy())


def ood_auroc(forget_losses: torch.Tensor, retain_losses: torch.Tensor) -> float:
    """AUROC of the loss as an out-of-distribution score, forget (positive) vs retain-train.

    1.0: every forget sample looks more foreign than every retain sample; 0.5: no difference.
    """
    return _auc(forget_losses.numpy(), retain_losses.numpy())


def triggered_inputs(images: torch.Tensor, spec: TaskSpec) -> torch.Tensor:
    """T(x + trigger) for clean float images: what the backdoor audit feeds the model."""
    return apply_task(add_trigger(images, spec), spec)


def backdoor_asr(outputs: torch.Tensor, spec: TaskSpec, threshold: float) -> float:
    """Attack success rate: share of outputs on triggered inputs that reproduce P."""
    c, h, w = outputs.shape[1:]
    return attack_success_rate(outputs, target_pattern(c, h, w, spec.pattern_cell), threshold)


def audit_model(model: torch.nn.Module, data: dict[str, tuple[torch.Tensor, torch.Tensor]],
                spec: TaskSpec, threshold: float, device: torch.device) -> dict[str, float]:
    """Every audit figure of one model.

    Args:
        model: the model to audit.
        data: "forget" (the clean forget samples), "retain" (retain-train samples),
            "heldout" (never-trained samples of the forget classes) as (inputs, targets),
            and "triggered" (held-out inputs with the trigger; targets unused).
        spec: task and backdoor geometry.
        threshold: correlation with P above which an output counts as an attack success.
        device: where to run the model.

    Returns:
        mia_auc, ood_auroc, backdoor_asr and the mean loss of each set.
    """
    model = model.to(device).eval()
    losses = {k: per_sample_loss(model, *data[k], device) for k in ("forget", "retain", "heldout")}
    triggered = predict(model, data["triggered"][0], device)
    return {
        "mia_auc": mia_auc(losses["forget"], losses["heldout"]),
        "ood_auroc": ood_auroc(losses["forget"], losses["retain"]),
        "backdoor_asr": backdoor_asr(triggered, spec, threshold),
        **{f"{k}_loss": float(v.mean()) for k, v in losses.items()},
    }
