"""Audits of forgetting: membership inference, out-of-distribution score, backdoor ASR.

The loss-based audits compare per-sample losses; each figure means little alone and is read
against the model retrained without the forget set, or, in production, against bounds
derived from held-out data (components/verdict.py).

The backdoor has two figures. The attack success rate asks "does the trigger still produce
the pattern P?"; trigger fidelity asks "what does the model do with a triggered input?". A
model that has forgotten the poisoned pairs treats the trigger as ordinary image content,
as a model retrained without them does (Fashion-MNIST: 19.2 dB on triggered inputs vs
21.5 dB on the same inputs clean). A model that only learned to avoid P can score ASR 0
while returning broken images on every triggered input (9.3 dB measured): suppression, not
forgetting. Fidelity is the PSNR of the output on triggered held-out inputs against the
image the task asks for from the clean input.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from components.backdoor import attack_success_rate, target_pattern
from components.metrics import psnr, ssim
from components.tasks import TaskSpec, add_trigger, apply_task, build_pairs
from components.training import per_sample_loss, predict
from components.verdict import auc_standard_error


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


def mia_efficacy(forget_losses: torch.Tensor, retain_losses: torch.Tensor,
                 test_losses: torch.Tensor, *others: torch.Tensor) -> float | tuple[float, ...]:
    """SalUn-style learned MIA: a classifier on loss features, trained on retain (members) vs
    test (non-members), applied to the forget set. Returns how much of the forget set it
    calls non-members (higher: more forgotten; read it against the retrained model's), and
    the same for every further set in `others` (held-out data: the reference-free reading).

    The share is the mean predicted non-member probability, not the share of hard calls:
    where members and non-members are indistinguishable (no overfitting) the classifier's
    threshold is arbitrary and the hard share flipped between 0.00 and 0.43 for two models
    retrained with different seeds; the soft share stays near 0.5 there and equals the hard
    one's expectation where the classifier is sure.
    """
    n = min(len(retain_losses), len(test_losses))
    x = np.r_[_log_loss(retain_losses[:n]), _log_loss(test_losses[:n])]
    y = np.r_[np.ones(n), np.zeros(n)]
    clf = LogisticRegression().fit(x, y)
    shares = tuple(float(clf.predict_proba(_log_loss(losses))[:, 0].mean())
                   for losses in (forget_losses, *others))
    return shares if others else shares[0]


def _log_loss(losses: torch.Tensor) -> np.ndarray:
    return np.log(losses.numpy().clip(1e-8))[:, None]


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
            "heldout" (never-trained samples of the forget classes), "test" (the test split)
            as (inputs, targets), and "triggered" (held-out inputs with the trigger).
        spec: task and backdoor geometry.
        threshold: correlation with P above which an output counts as an attack success.
        device: where to run the model.

    Returns:
        mia_auc (with mia_auc_se, its sampling error), mia_efficacy, ood_auroc,
        backdoor_asr, trigger_psnr and trigger_ssim (the
        outputs on triggered inputs against the clean images' targets), trigger_clean_psnr
        (the same inputs without the trigger: the model's own fidelity), trigger_content_psnr
        (its clean-input outputs with the trigger stamped on as content: the fidelity of a
        model that reproduces the trigger, the reference-free bound), heldout_mia_efficacy
        and heldout_ood_auroc (the same figures for the held-out reference: a never-seen
        stand-in), the sample sizes n_<set> and the mean loss of each set.
    """
    model = model.to(device).eval()
    losses = {k: per_sample_loss(model, *data[k], device)
              for k in ("forget", "retain", "heldout", "test")}
    triggered_in, clean_targets = data["triggered"]
    triggered = predict(model, triggered_in, device)
    clean = predict(model, apply_task(clean_targets, spec), device)
    membership = mia_auc(losses["forget"], losses["heldout"])
    efficacy, heldout_efficacy = mia_efficacy(losses["forget"], losses["retain"],
                                              losses["test"], losses["heldout"])
    return {
        "mia_auc": membership,
        "mia_auc_se": auc_standard_error(membership, len(losses["forget"]),
                                         len(losses["heldout"])),
        "mia_efficacy": efficacy,
        "ood_auroc": ood_auroc(losses["forget"], losses["retain"]),
        # never-seen data of the forget set's classes under the same model: what the forget
        # set's figures are read against where no retrained model exists
        "heldout_mia_efficacy": heldout_efficacy,
        "heldout_ood_auroc": ood_auroc(losses["heldout"], losses["retain"]),
        **{f"n_{k}": float(len(v)) for k, v in losses.items()},
        "backdoor_asr": backdoor_asr(triggered, spec, threshold),
        "trigger_psnr": psnr(triggered, clean_targets),
        "trigger_ssim": ssim(triggered, clean_targets),
        "trigger_clean_psnr": psnr(clean, clean_targets),
        "trigger_content_psnr": psnr(add_trigger(clean, spec), clean_targets),
        **{f"{k}_loss": float(v.mean()) for k, v in losses.items()},
    }


def eval_pairs(images: dict[str, np.ndarray], spec: TaskSpec
               ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Clean (input, target) pairs of named uint8 image sets; a set named "triggered" gets
    the trigger stamped on its inputs (its targets stay the clean images)."""
    out = {}
    for name, batch in images.items():
        inputs, targets = build_pairs(batch, np.zeros(len(batch), bool), spec)
        out[name] = (triggered_inputs(targets, spec), targets) if name == "triggered" \
            else (inputs, targets)
    return out
