"""Baseline `neggrad_plus` (Kurmanji et al. 2023): descend β·l_r - (1-β)·l_f jointly.

In the design pilot, with a weak forget term (β = 0.99, 150 steps) it removed the backdoor in
the class scenario; β = 0.9 / 0.97 over-forgot (forget PSNR 1.9 / 10.0 dB)."""

from __future__ import annotations

import torch
from torch import nn

from components.methods.base import Method, UnlearnData, register
from components.methods.loop import run_steps
from components.models import loss_per_sample, parameter_group
from components.params import Params
from components.training import JobContext


def neggrad_plus(model: nn.Module, data: UnlearnData, params: Params, ctx: JobContext) -> dict:
    """Adam on β·retain loss − (1−β)·forget loss for unlearn.neggrad_plus.steps steps."""
    cfg = params.unlearn.neggrad_plus

    def loss(m: nn.Module, retain: tuple, forget: tuple, step: int) -> torch.Tensor:
        l_r = loss_per_sample(m, *retain).mean()
        l_f = loss_per_sample(m, *forget).mean()
        return cfg.beta * l_r - (1 - cfg.beta) * l_f

    return run_steps(model, data, ctx, label="neggrad_plus", steps=cfg.steps,
                     optimizer=torch.optim.Adam(parameter_group(model, "all"), lr=cfg.lr),
                     loss_fn=loss, seed=params.seed)


METHOD = Method(name="neggrad_plus", forget=neggrad_plus, retention=False,
                summary="joint descent on the retain loss and ascent on the forget loss")
register(METHOD)
