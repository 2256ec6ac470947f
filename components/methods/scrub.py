"""Baseline `scrub` (Kurmanji et al. 2023, "Towards Unbounded Machine Unlearning"): a student
(the model) moves away from the teacher (the original) on forget inputs ("max" steps) and
stays with it and the targets on retain inputs ("min" steps). The KL of the classification
version becomes the model family's distance to the teacher (components.models.
distill_per_sample: L2 between outputs or predicted noise, KL between token distributions
for vqtoken). Max steps alternate with min steps
for the first `max_steps` steps; the rest are min steps."""

from __future__ import annotations

import torch
from torch import nn

from components.methods.base import Method, UnlearnData, register
from components.methods.loop import run_steps
from components.models import distill_per_sample, parameter_group
from components.params import Params
from components.training import JobContext


def scrub(model: nn.Module, data: UnlearnData, params: Params, ctx: JobContext) -> dict:
    """Alternating max (forget) and min (retain) steps against the original as teacher."""
    cfg = params.unlearn.scrub
    teacher = data.original

    def loss(m: nn.Module, retain: tuple, forget: tuple, step: int) -> torch.Tensor:
        if step < 2 * cfg.max_steps and step % 2 == 0:  # max step: move away on forget
            return -distill_per_sample(m, teacher, *forget)[1].mean()
        l_r, to_teacher = distill_per_sample(m, teacher, *retain)
        return l_r.mean() + cfg.alpha * to_teacher.mean()

    return run_steps(model, data, ctx, label="scrub", steps=cfg.steps,
                     optimizer=torch.optim.Adam(parameter_group(model, "all"), lr=cfg.lr),
                     loss_fn=loss, seed=params.seed)


METHOD = Method(name="scrub", forget=scrub, retention=False,
                summary="SCRUB: alternate moving away from the teacher on forget inputs and "
                        "staying with it on retain inputs (L2 in place of KL)")
register(METHOD)
