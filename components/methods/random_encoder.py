"""Baseline `random_encoder`: the encoder's output on forget inputs is pulled to Gaussian noise
with the original embedding's per-dimension mean and std; on retain inputs it is kept at the
original's embedding. Only the encoder trains."""

from __future__ import annotations

import torch
from torch import nn

from components.methods.base import Method, UnlearnData, register
from components.methods.loop import average_gradients, run_steps
from components.models import embed, parameter_group
from components.params import Params
from components.training import EVAL_BATCH, JobContext, sample_losses


def random_encoder(model: nn.Module, data: UnlearnData, params: Params, ctx: JobContext) -> dict:
    """Encoder-only unlearning towards random embeddings with the teacher's statistics."""
    cfg = params.unlearn.random_encoder
    with torch.no_grad():  # in eval-sized chunks: 2,048 inputs at once held them all
        sample = data.retain[0][: cfg.stats_samples]
        emb = torch.cat([embed(data.original, sample[i : i + EVAL_BATCH].to(ctx.device),
                               "random_encoder") for i in range(0, len(sample), EVAL_BATCH)])
        mean, std = emb.mean(0), emb.std(0)
    gen = torch.Generator().manual_seed(params.seed + 3)
    group = parameter_group(model, "encoder")

    def loss(m: nn.Module, retain: tuple, forget: tuple, step: int) -> torch.Tensor:
        with torch.no_grad():
            target_r = embed(data.original, retain[0], "random_encoder")
            noise = torch.randn((len(forget[0]), *mean.shape), generator=gen).to(mean)
            target_f = mean + std * noise
        l_r = sample_losses(embed(m, retain[0], "random_encoder"), target_r).mean()
        l_f = sample_losses(embed(m, forget[0], "random_encoder"), target_f).mean()
        return cfg.alpha_r * l_r + cfg.alpha_f * l_f

    return run_steps(model, data, ctx, label="random_encoder", steps=cfg.steps,
                     optimizer=torch.optim.Adam(group, lr=cfg.lr), loss_fn=loss,
                     seed=params.seed, before_step=lambda: average_gradients(group),
                     generators=(gen,))


METHOD = Method(name="random_encoder", forget=random_encoder, retention=False,
                summary="encoder output on forget inputs pulled to noise with the teacher "
                        "embedding's statistics")
register(METHOD)
