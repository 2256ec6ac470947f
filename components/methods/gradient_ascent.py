"""Baseline `gradient_ascent`: maximise the forget loss for a fixed budget (no stop rule, no
retention). It forgets, and it is known to wreck everything else along the way."""

from __future__ import annotations

import torch
from torch import nn

from components.methods.base import Method, UnlearnData, register
from components.methods.loop import run_steps
from components.models import loss_per_sample, parameter_group
from components.params import Params
from components.training import JobContext


def gradient_ascent(model: nn.Module, data: UnlearnData, params: Params, ctx: JobContext) -> dict:
    """Clipped SGD ascent on the forget loss for unlearn.gradient_ascent.steps steps."""
    cfg = params.unlearn.gradient_ascent
    group = parameter_group(model, "all")

    def loss(m: nn.Module, retain: tuple, forget: tuple, step: int) -> torch.Tensor:
        return -loss_per_sample(m, *forget).mean()

    return run_steps(model, data, ctx, label="gradient_ascent", steps=cfg.steps,
                     optimizer=torch.optim.SGD(group, lr=cfg.lr), loss_fn=loss, seed=params.seed,
                     clip=(group, cfg.clip_norm))


METHOD = Method(name="gradient_ascent", forget=gradient_ascent, retention=False,
                summary="ascend the forget loss for a fixed budget (no retention)")
register(METHOD)
