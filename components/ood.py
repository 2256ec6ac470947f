"""How far a forget sample must be pushed to look never-seen: the decoupling thresholds λ.

Two readings of "out-of-distribution for this model" (docs/science.md, "The default `decouple`"):

- `quantile` (the paper's literal reading): one λ for every sample, the q-quantile of the
  original model's per-sample loss on held-out data.
- `pair` (the default): a λ_i per forget pair, the loss a model that never saw that pair
  would have on it. A held-out input the original never saw stands in for the unseen model:
  the output for the nearest held-out input u_h, corrected for how far u_h is from the
  forget input u_i by a Lipschitz constant L:

      sqrt(λ_i) = max(0, RMS(f0(u_h) - y_i) - L · RMS(u_i - u_h))

  L is fitted on held-out pairs themselves (each with its nearest *other* held-out input),
  whose real loss under the original *is* a never-seen loss: L is the q-quantile of the
  per-pair L that makes the estimate exact. Nothing about the forget set, a retrained
  model or a backdoor enters the fit.

  RMS(f0(u_h) - y_i) is the square root of the loss of the pair (u_h, y_i), so the rule is
  written with the model family's loss (components.models.loss_per_sample): the output MSE
  for ae and mae, token cross-entropy for vqtoken, noise-prediction MSE for diffusion, and λ
  is then in the unit the ascent and the retention compare it with.

Why it matters (measured on Fashion-MNIST, forget class 7 with a backdoor in 10 % of it):
the single held-out quantile λ = 0.020 sits far below what a never-seen *poisoned* pair
scores (0.40: the retrained model reconstructs the garment, not the pattern) and above
what a never-seen *clean* sneaker scores (0.008-0.010), so one λ either keeps the backdoor
or over-forgets clean images. The per-pair estimate gives 0.31 and 0.0067 on average.
"""

from __future__ import annotations

import torch
from torch import nn

from components.training import per_sample_loss


def root_loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
              device: torch.device) -> torch.Tensor:
    """Per-pair square root of the model family's loss (for pixel losses: the RMS error)."""
    return per_sample_loss(model, inputs, targets, device).sqrt()


def nearest(queries: torch.Tensor, pool: torch.Tensor, exclude_self: bool = False,
            chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of, and RMS distance to, the nearest pool input of each query input.

    Args:
        queries: (N, ...) inputs.
        pool: (M, ...) inputs.
        exclude_self: queries are the pool itself; do not match a sample to itself.
        chunk: queries per distance block (memory: chunk x M floats).

    Returns:
        (indices (N,), RMS distances (N,)).
    """
    flat = pool.flatten(1)
    idx, dist = [], []
    for start in range(0, len(queries), chunk):
        d = torch.cdist(queries[start : start + chunk].flatten(1), flat)
        if exclude_self:
            rows = torch.arange(d.shape[0])
            d[rows, rows + start] = float("inf")
        best = d.min(1)
        idx.append(best.indices)
        dist.append(best.values / flat.shape[1] ** 0.5)
    return torch.cat(idx), torch.cat(dist)


def heldout_quantile(original: nn.Module, heldout: tuple[torch.Tensor, torch.Tensor],
                     quantile: float, device: torch.device) -> float:
    """The literal λ: the q-quantile of the original's per-sample held-out loss."""
    return float(torch.quantile(per_sample_loss(original, *heldout, device), quantile))


def never_seen_loss(original: nn.Module, forget: tuple[torch.Tensor, torch.Tensor],
                    heldout: tuple[torch.Tensor, torch.Tensor], quantile: float,
                    device: torch.device, pool_size: int = 2000) -> tuple[torch.Tensor, float]:
    """Per-pair λ_i: the estimated loss of a never-seen model on each forget pair.

    Args:
        original: the original model f0.
        forget: (inputs, targets) of the forget set.
        heldout: (inputs, targets) of held-out pairs (never trained on).
        quantile: q of the fit of L (0.5: the estimate is exact for the median held-out pair).
        device: where to run the model.
        pool_size: held-out pairs (evenly spaced) that stand in for never-seen pairs: L is
            fitted on them (each with its nearest other pool member) and the forget pairs
            take their neighbours from them. The same pool on both sides keeps the
            correction consistent with the neighbour distances; 2,000 costs a third of 6,000.

    Returns:
        (λ_i for every forget pair, the fitted L).
    """
    # evenly spaced, not the first ones: datasets stored class by class stay balanced
    pick = torch.linspace(0, len(heldout[0]) - 1, min(pool_size, len(heldout[0]))).long()
    h_in, h_target = heldout[0][pick], heldout[1][pick]
    real = root_loss(original, h_in, h_target, device)
    nn_h, dist_h = nearest(h_in, h_in, exclude_self=True)
    lipschitz = (root_loss(original, h_in[nn_h], h_target, device) - real) / \
        dist_h.clamp_min(1e-6)
    fit = float(torch.quantile(lipschitz, quantile))
    nn_f, dist_f = nearest(forget[0], h_in)
    bound = (root_loss(original, h_in[nn_f], forget[1], device) - fit * dist_f).clamp_min(0)
    return bound.pow(2), fit


def decoupling_thresholds(original: nn.Module, forget: tuple[torch.Tensor, torch.Tensor],
                          heldout: tuple[torch.Tensor, torch.Tensor], rule: str,
                          quantile: float, device: torch.device,
                          pool_size: int = 2000) -> tuple[torch.Tensor, dict]:
    """λ for every forget pair under `rule` ("pair" or "quantile").

    Returns:
        (λ_i tensor of len(forget), figures to log: mean λ and, for "pair", L).
    """
    if rule == "quantile":
        lam = heldout_quantile(original, heldout, quantile, device)
        return torch.full((len(forget[0]),), lam), {"lambda": lam}
    if rule == "pair":
        lam_i, fit = never_seen_loss(original, forget, heldout, quantile, device, pool_size)
        return lam_i, {"lambda": float(lam_i.mean()), "lipschitz": fit}
    raise ValueError(f"unknown decoupling threshold rule {rule!r} (pair or quantile)")


def memorised_residual(original: nn.Module, forget: tuple[torch.Tensor, torch.Tensor],
                       heldout: tuple[torch.Tensor, torch.Tensor], thresholds: torch.Tensor,
                       device: torch.device, memorised_ratio: float = 10.0,
                       coherence: float = 2.0, pool_size: int = 2000
                       ) -> tuple[torch.Tensor | None, dict]:
    """What the memorised forget inputs share beyond their never-seen neighbours.

    A pair is *memorised* when the original does far better on it than a model that never
    saw it could: λ_i >= memorised_ratio · l0_i. Measured on Fashion-MNIST (three classes,
    random samples): clean pairs have λ_i / l0_i ≤ 3.9 (99th percentile), backdoored ones
    ≥ 13 (1st percentile), so 10 separates them without knowing which were poisoned.

    Each memorised input minus its nearest held-out input is a residual: whatever made the
    original answer it from memory, plus the natural difference between two images. What
    several memorised inputs hold in common (a trigger, a watermark, a shared patch) is
    coherent across residuals; natural differences are not. A pixel is kept when the mean
    residual there exceeds `coherence` standard deviations of the residuals (the 4x4
    trigger: 14-16 pixels kept of 784, none elsewhere). The result is zero when the
    memorised pairs share nothing, e.g. ordinary deletion requests.

    The retention phase trains on retain images with this residual added, as image content
    (components/retention.py): what carried the memorised association in the forget set
    becomes ordinary content on every other image, as it is for a model that never saw it.
    Nothing here knows the trigger, the pattern or which pairs were poisoned.

    Args:
        original: the original model f0.
        forget: (inputs, targets) of the forget set.
        heldout: (inputs, targets) of held-out pairs.
        thresholds: λ_i of every forget pair (never_seen_loss).
        device: where to run the model.
        memorised_ratio: κ in λ_i >= κ · l0_i.
        coherence: z of the per-pixel test |mean| > z · std.
        pool_size: held-out inputs (evenly spaced) searched for neighbours.

    Returns:
        (residual of one input's shape, or None when nothing is memorised and shared;
         figures: memorised pairs, coherent pixels).
    """
    l0 = per_sample_loss(original, *forget, device)
    memorised = thresholds >= memorised_ratio * l0
    figures = {"memorised": int(memorised.sum()), "coherent_pixels": 0}
    if figures["memorised"] < 2:  # one residual has no spread to test coherence against
        return None, figures
    pick = torch.linspace(0, len(heldout[0]) - 1, min(pool_size, len(heldout[0]))).long()
    pool = heldout[0][pick]
    inputs = forget[0][memorised]
    idx, _ = nearest(inputs, pool)
    residuals = inputs - pool[idx]
    mean, std = residuals.mean(0), residuals.std(0)
    keep = mean.abs() > coherence * std
    figures["coherent_pixels"] = int(keep.sum())
    if not keep.any():
        return None, figures
    return mean * keep, figures
