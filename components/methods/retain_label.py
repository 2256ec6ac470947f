"""Baseline `retain_label`: relabelling (the I2I analogue of random-label unlearning): forget
inputs are trained towards the targets of randomly drawn retain samples, jointly with the
retain loss, so the model maps them to something else it already knows."""

from __future__ import annotations

import torch
from torch import nn

from components.methods.base import Method, UnlearnData, register
from components.methods.loop import run_steps
from components.models import loss_per_sample, parameter_group
from components.params import Params
from components.training import JobContext


def relabel_loss(data: UnlearnData, gen: torch.Generator):
    """Retain loss + loss of forget inputs against random retain targets, drawn from `gen`
    (shared with salun)."""
    targets = data.retain[1]

    def loss(m: nn.Module, retain: tuple, forget: tuple, step: int) -> torch.Tensor:
        pick = torch.randint(len(targets), (len(forget[0]),), generator=gen)
        relabel = targets[pick].to(forget[0].device)
        return loss_per_sample(m, *retain).mean() + loss_per_sample(m, forget[0], relabel).mean()

    return loss


def retain_label(model: nn.Module, data: UnlearnData, params: Params, ctx: JobContext) -> dict:
    """Adam on retain loss + forget inputs against random retain targets."""
    cfg = params.unlearn.retain_label
    gen = torch.Generator().manual_seed(params.seed + 4)
    return run_steps(model, data, ctx, label="retain_label", steps=cfg.steps,
                     optimizer=torch.optim.Adam(parameter_group(model, "all"), lr=cfg.lr),
                     loss_fn=relabel_loss(data, gen), seed=params.seed, generators=(gen,))


METHOD = Method(name="retain_label", forget=retain_label, retention=False,
                summary="forget inputs trained towards random retain targets, jointly with "
                        "the retain loss")
register(METHOD)
