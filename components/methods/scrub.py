"""Baseline `scrub` (Kurmanji et al. 2023, "Towards Unbounded Machine Unlearning"): a student
(the model) moves away from the teacher (the original) on forget inputs ("max" steps) and
stays with it and the targets on retain inputs ("min" steps). The KL of the classification
version becomes an L2 distance between outputs here. Max steps alternate with min steps
for the first `max_steps` steps; the rest are min steps."""

from __future__ import annotations

import torch
from torch import nn

from components.methods.base import Method, UnlearnData
from components.methods.loop import run_steps
from components.params import Params
from components.training import JobContext, sample_losses


def scrub(model: nn.Module, data: UnlearnData, params: Params, ctx: JobContext) -> dict:
    """Alternating max (forget) and min (retain) steps against the original as teacher."""
    cfg = params.unlearn.scrub
    teacher = data.original

    def loss(m: nn.Module, retain: tuple, forget: tuple, step: int) -> torch.Tensor:
        if step < 2 * cfg.max_steps and step % 2 == 0:  # max step: move away on forget
            with torch.no_grad():
                t_f = teacher(forget[0])
            return -sample_losses(m(forget[0]), t_f).mean()
        out = m(retain[0])
        with torch.no_grad():
            t_r = teacher(retain[0])
        return sample_losses(out, retain[1]).mean() + cfg.alpha * sample_losses(out, t_r).mean()

    return run_steps(model, data, ctx, label="scrub", steps=cfg.steps,
                     optimizer=torch.optim.Adam(model.parameters(), lr=cfg.lr), loss_fn=loss,
                     seed=params.seed)


METHOD = Method(name="scrub", forget=scrub, retention=False,
                summary="SCRUB: alternate moving away from the teacher on forget inputs and "
                        "staying with it on retain inputs (L2 in place of KL)")
