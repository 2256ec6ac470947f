"""Baseline `salun` (Fan et al., ICLR 2024): only the weights most salient to the forget loss
move. The mask keeps the top `sparsity` share of weights by |∇ l_f| (accumulated over the
forget set); those weights then run the relabelling objective of `retain_label`."""

from __future__ import annotations

import torch
from torch import nn

from components.methods.base import Method, UnlearnData, register
from components.methods.loop import run_steps
from components.methods.retain_label import relabel_loss
from components.models import loss_per_sample, parameter_group
from components.params import Params
from components.training import JobContext


def saliency_mask(model: nn.Module, forget: tuple[torch.Tensor, torch.Tensor], sparsity: float,
                  device: torch.device, batch_size: int = 256) -> list[torch.Tensor]:
    """Boolean masks (one per parameter of parameter_group(model, "all")): the `sparsity` share
    of weights with the largest |gradient of the forget loss|, thresholded over them all."""
    model.zero_grad(set_to_none=True)
    for i in range(0, len(forget[0]), batch_size):
        x, y = forget[0][i : i + batch_size].to(device), forget[1][i : i + batch_size].to(device)
        (loss_per_sample(model, x, y).sum() / len(forget[0])).backward()
    # |grad| in place: the gradients become the saliencies, no second copy of the model
    grads = [p.grad.abs_() if p.grad is not None else torch.zeros_like(p)
             for p in parameter_group(model, "all")]
    model.zero_grad(set_to_none=True)
    total = sum(g.numel() for g in grads)
    cut = kth_largest(grads, max(1, int(round(sparsity * total))))
    return [g >= cut for g in grads]


def kth_largest(values: list[torch.Tensor], k: int) -> torch.Tensor:
    """The k-th largest of the non-negative float values of several tensors, as torch.topk of
    their concatenation would give it, without concatenating them.

    topk over half of all parameters held the concatenation, k values and k int64 indices:
    3.5x the model's size in floats on top of its gradients (issue 21). Here: a bisection
    on the float32 bit patterns (ordered like the values, for values >= 0), 31 passes that
    each count the values at or above a candidate, one boolean tensor of one parameter at
    a time.
    """
    bits = [v.float().view(torch.int32) for v in values]
    lo, hi = 0, 2**31  # count(bits >= lo) >= k > count(bits >= hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if int(sum((b >= mid).sum() for b in bits)) >= k:
            lo = mid
        else:
            hi = mid
    return torch.tensor(lo, dtype=torch.int32).view(torch.float32)


def salun(model: nn.Module, data: UnlearnData, params: Params, ctx: JobContext) -> dict:
    """Relabelling unlearning restricted to the saliency mask."""
    cfg = params.unlearn.salun
    masks = saliency_mask(model, data.forget, cfg.sparsity, ctx.device)
    parameters = parameter_group(model, "all")

    def mask_gradients() -> None:
        for p, m in zip(parameters, masks, strict=True):
            if p.grad is not None:
                p.grad.mul_(m)

    gen = torch.Generator().manual_seed(params.seed + 4)
    info = run_steps(model, data, ctx, label="salun", steps=cfg.steps,
                     optimizer=torch.optim.Adam(parameters, lr=cfg.lr),
                     loss_fn=relabel_loss(data, gen), seed=params.seed,
                     before_step=mask_gradients, generators=(gen,))
    info["masked_share"] = float(sum(m.sum() for m in masks) / sum(m.numel() for m in masks))
    return info


METHOD = Method(name="salun", forget=salun, retention=False,
                summary="SalUn: relabelling on the weights most salient to the forget loss")
register(METHOD)
