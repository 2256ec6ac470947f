"""Quality metrics and the retrain gap.

PSNR per sample from the per-sample MSE (images in [0, 1]); SSIM from torchmetrics with
a window that fits small images (8x8 digits cannot take the usual 11-pixel window).
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from components.training import predict, sample_losses

# The retrain gap compares these figures; PSNRs enter in units of 10 dB so that every
# term is of order one (DESIGN.md §2.1a: "PSNR differences / 10 dB, averaged with the AUCs").
GAP_TERMS = {
    "forget_psnr": 10.0, "retain_psnr": 10.0, "test_psnr": 10.0,
    "mia_auc": 1.0, "ood_auroc": 1.0, "backdoor_asr": 1.0,
}  # fmt: skip


def psnr(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean over samples of the per-sample PSNR in dB (MSE floored at 1e-10)."""
    mse = sample_losses(outputs, targets).clamp_min(1e-10)
    return float((10 * torch.log10(1.0 / mse)).mean())


def ssim(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean SSIM, Gaussian window of up to 11 pixels (odd, no larger than the image)."""
    side = min(outputs.shape[-2:])
    kernel = min(11, side if side % 2 else side - 1)
    value = structural_similarity_index_measure(
        outputs.float(), targets.float(), data_range=1.0, kernel_size=kernel,
        sigma=1.5 * kernel / 11,
    )
    return float(value)


def retrain_gap(model: dict[str, float], retrained: dict[str, float]) -> float:
    """Mean |metric(model) - metric(retrained)| over GAP_TERMS (PSNRs divided by 10 dB).

    Args:
        model: a model's metrics block.
        retrained: the retrained reference's metrics block.

    Returns:
        The gap (0 = indistinguishable from retraining on these figures).
    """
    terms = [abs(model[k] - retrained[k]) / scale for k, scale in GAP_TERMS.items()]
    return float(np.mean(terms))


def quality_metrics(model: torch.nn.Module, data: dict[str, tuple[torch.Tensor, torch.Tensor]],
                    device: torch.device) -> dict[str, float]:
    """PSNR and SSIM of the model's outputs on each named set of (inputs, targets).

    Returns:
        {"<set>_psnr": dB, "<set>_ssim": ...} for every set in `data`.
    """
    model = model.to(device).eval()
    out: dict[str, float] = {}
    for name, (inputs, targets) in data.items():
        outputs = predict(model, inputs, device)
        out[f"{name}_psnr"] = psnr(outputs, targets)
        out[f"{name}_ssim"] = ssim(outputs, targets)
    return out
