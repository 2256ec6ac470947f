"""Baseline `li2024` (Li et al., ICLR 2024, "Machine Unlearning for Image-to-Image Generative
Models"): only the encoder trains, pulled to the original's embedding on retain inputs and
to the original's embedding of a noise image on forget inputs:

    L = α_R·mean_r ||E(T(x_r)) − E0(T(x_r))||² + α_F·mean_f ||E(T(x_f)) − E0(T(n))||²,
    n = clamp(N(mean(x), std(x)²), 0, 1)

Defaults from their code: AdamW(0.9, 0.95), weight decay 0.05, grad clip 3.0, α_R = 1,
α_F = 0.2 (their MAGE setting); steps and rate scaled to this model's budget."""

from __future__ import annotations

import torch
from torch import nn

from components.methods.base import Method, UnlearnData, register
from components.methods.loop import average_gradients, run_steps
from components.models import embed, parameter_group
from components.params import Params
from components.tasks import TaskSpec, apply_task
from components.training import JobContext, sample_losses


def noise_images(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """n = clamp(N(mean(x), std(x)²), 0, 1), one image per input, from the batch's statistics."""
    noise = torch.randn(like.shape, generator=generator).to(like)
    return (like.mean() + like.std() * noise).clamp(0, 1)


def li2024(model: nn.Module, data: UnlearnData, params: Params, ctx: JobContext) -> dict:
    """Encoder-only unlearning towards the original's embedding of noise images."""
    cfg = params.unlearn.li2024
    spec = TaskSpec(task=params.model.task, inpaint_box=params.model.inpaint_box,
                    outpaint_border=params.model.outpaint_border)
    gen = torch.Generator().manual_seed(params.seed + 2)
    group = parameter_group(model, "encoder")

    def loss(m: nn.Module, retain: tuple, forget: tuple, step: int) -> torch.Tensor:
        with torch.no_grad():
            target_r = embed(data.original, retain[0], "li2024")
            target_f = embed(data.original, apply_task(noise_images(forget[1], gen), spec),
                             "li2024")
        l_r = sample_losses(embed(m, retain[0], "li2024"), target_r).mean()
        l_f = sample_losses(embed(m, forget[0], "li2024"), target_f).mean()
        return cfg.alpha_r * l_r + cfg.alpha_f * l_f

    opt = torch.optim.AdamW(group, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    return run_steps(model, data, ctx, label="li2024", steps=cfg.steps, optimizer=opt,
                     loss_fn=loss, seed=params.seed, clip=(group, cfg.clip_norm),
                     before_step=lambda: average_gradients(group), generators=(gen,))


METHOD = Method(name="li2024", forget=li2024, retention=False,
                summary="Li et al. 2024: encoder pulled to the original's embedding of noise "
                        "on forget inputs, kept on retain inputs")
register(METHOD)
