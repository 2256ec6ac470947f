"""`diffusion`: a small conditional UNet denoiser for image-to-image tasks (Palette, Saharia
et al. 2022): the noisy target, the task's input and the task mask go in, the noise comes out.

Training is DDPM's (Ho et al. 2020): a random step t of a cosine schedule (Nichol & Dhariwal
2021) of `timesteps` steps, loss = MSE between the predicted and the drawn noise. In eval
mode the loss averages `eval_draws` (t, noise) draws keyed by the pair (models/base.py
PairKeys), so that a per-sample loss is stable enough for the membership audits (one draw's
spread across t is larger than the gap between members and non-members) and is the same in
any batch. Generation: a deterministic DDIM sampler (Song et al. 2021, η = 0) of
`sample_steps` steps from noise keyed by the input, x0 clipped to the image range.

Parameter groups: `encoder` = the down path (time MLP, input conv, down blocks, middle
block); `decoder` = the up path and the output conv. The down path embeds a noisy target at
a step together with the input, not the input alone, so methods defined on an encoder
embedding of the input (li2024, random_encoder) do not apply.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from components.models.base import (
    Draws,
    I2IModel,
    PairKeys,
    draw_normal,
    draw_uniform,
    sample_losses,
)
from components.params import DiffusionParams


def cosine_alpha_bar(steps: int, offset: float = 0.008) -> torch.Tensor:
    """ᾱ_t for t = 0..steps-1 of the cosine schedule, each β clipped at 0.999."""
    f = torch.cos((torch.arange(steps + 1) / steps + offset) / (1 + offset) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, 0)


def timestep_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features (N, dim) of integer steps t (N,)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device) / half)
    angles = t.float()[:, None] * freqs
    return torch.cat([angles.sin(), angles.cos(), angles[:, : dim % 2] * 0], 1)


class Block(nn.Module):
    """Residual block: norm, SiLU, conv, + the step's features per channel, norm, SiLU, conv."""

    def __init__(self, cin: int, cout: int, time_dim: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(1, cin), nn.Conv2d(cin, cout, 3, 1, 1)
        self.time = nn.Linear(time_dim, cout)
        self.norm2, self.conv2 = nn.GroupNorm(1, cout), nn.Conv2d(cout, cout, 3, 1, 1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.time(temb)[:, :, None, None]
        return self.conv2(F.silu(self.norm2(h))) + self.skip(x)


class DownPath(nn.Module):
    """Side s -> s/4 with widths (w0, w1); returns the bottleneck, the skips and the step's
    embedding (the up path needs both)."""

    def __init__(self, cin: int, widths: list[int], time_dim: int):
        super().__init__()
        w0, w1 = widths
        self.time = nn.Sequential(nn.Linear(time_dim, time_dim), nn.SiLU(),
                                  nn.Linear(time_dim, time_dim))
        self.inp = nn.Conv2d(cin, w0, 3, 1, 1)
        self.block0, self.down0 = Block(w0, w0, time_dim), nn.Conv2d(w0, w0, 3, 2, 1)
        self.block1, self.down1 = Block(w0, w1, time_dim), nn.Conv2d(w1, w1, 3, 2, 1)
        self.mid = Block(w1, w1, time_dim)

    def forward(self, x: torch.Tensor, features: torch.Tensor) -> tuple:
        temb = self.time(features)
        h0 = self.block0(self.inp(x), temb)
        h1 = self.block1(self.down0(h0), temb)
        return self.mid(self.down1(h1), temb), (h0, h1), temb


class UpPath(nn.Module):
    """Side s/4 -> s, concatenating the down path's skips; predicts the noise."""

    def __init__(self, cout: int, widths: list[int], time_dim: int):
        super().__init__()
        w0, w1 = widths
        self.up1, self.block1 = nn.ConvTranspose2d(w1, w1, 4, 2, 1), Block(2 * w1, w1, time_dim)
        self.up0, self.block0 = nn.ConvTranspose2d(w1, w0, 4, 2, 1), Block(2 * w0, w0, time_dim)
        self.out = nn.Sequential(nn.GroupNorm(1, w0), nn.SiLU(), nn.Conv2d(w0, cout, 3, 1, 1))

    def forward(self, h: torch.Tensor, skips: tuple, temb: torch.Tensor) -> torch.Tensor:
        h = self.block1(torch.cat([self.up1(h), skips[1]], 1), temb)
        h = self.block0(torch.cat([self.up0(h), skips[0]], 1), temb)
        return self.out(h)


class ConditionalDiffusion(I2IModel):
    """Args:
        channels: image channels.
        image_size: image side (divisible by 4: two stride-2 stages).
        cfg: the `model.diffusion` block.
        visible: (H, W) task mask, fed as an extra input channel (a blank region and a
            black one look alike otherwise: Fashion-MNIST's background is 0).
    """

    family = "diffusion"
    embeds = False
    no_embedding = ("its UNet's down path embeds a noisy target at a diffusion step together "
                    "with the input, not the input alone")

    def __init__(self, channels: int, image_size: int, cfg: DiffusionParams,
                 visible: torch.Tensor):
        super().__init__()
        if image_size % 4:
            raise ValueError(f"the diffusion UNet needs an image side divisible by 4, not "
                             f"{image_size}")
        self.time_dim, self.sample_steps, self.eval_draws = \
            cfg.time_dim, cfg.sample_steps, cfg.eval_draws
        self.encoder = DownPath(2 * channels + 1, cfg.widths, cfg.time_dim)
        self.decoder = UpPath(channels, cfg.widths, cfg.time_dim)
        self.register_buffer("visible", visible[None, None].float(), persistent=False)
        self.register_buffer("alpha_bar", cosine_alpha_bar(cfg.timesteps), persistent=False)

    def noise(self, x_t: torch.Tensor, inputs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predicted noise of x_t at steps t, conditioned on the task's input."""
        cond = torch.cat([x_t, 2 * inputs - 1, self.visible.expand(x_t.shape[0], -1, -1, -1)], 1)
        h, skips, temb = self.encoder(cond, timestep_features(t, self.time_dim))
        return self.decoder(h, skips, temb)

    def noised(self, inputs: torch.Tensor, targets: torch.Tensor,
               gen: Draws) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(x_t, t, noise) of each draw: one in training, `eval_draws` in eval mode.

        One draw at a time, each over the N pairs: stacking the draws into one batch of
        eval_draws·N images made a chunk of 512 eval pairs a UNet batch of 2,048, and the
        decouple stage (whose λ and probe are eval losses) peaked at 21.4 GB on a GPU,
        twice the training steps of every method (issue 21)."""
        draws = 1 if self.training else self.eval_draws
        x0, steps = 2 * targets - 1, len(self.alpha_bar)
        for d in range(draws):
            src = gen.fork(d) if isinstance(gen, PairKeys) else gen
            t = (draw_uniform((x0.shape[0],), src, x0.device) * steps).long().clamp(max=steps - 1)
            noise = draw_normal(tuple(x0.shape), src, x0.device)
            ab = self.alpha_bar[t][:, None, None, None]
            yield ab.sqrt() * x0 + (1 - ab).sqrt() * noise, t, noise

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor, gen: Draws) -> torch.Tensor:
        return torch.stack([sample_losses(self.noise(x_t, inputs, t), noise)
                            for x_t, t, noise in self.noised(inputs, targets, gen)]).mean(0)

    def distill(self, inputs: torch.Tensor, targets: torch.Tensor, teacher: I2IModel,
                gen: Draws) -> tuple[torch.Tensor, torch.Tensor]:
        own, to_teacher = [], []
        for x_t, t, noise in self.noised(inputs, targets, gen):
            predicted = self.noise(x_t, inputs, t)
            with torch.no_grad():
                reference = teacher.noise(x_t, inputs, t)
            own.append(sample_losses(predicted, noise))
            to_teacher.append(sample_losses(predicted, reference))
        return torch.stack(own).mean(0), torch.stack(to_teacher).mean(0)

    def generate(self, inputs: torch.Tensor, gen: Draws) -> torch.Tensor:
        """DDIM (η = 0) over `sample_steps` evenly spaced steps, from T-1 down to 0."""
        n, steps = inputs.shape[0], len(self.alpha_bar)
        x = draw_normal(tuple(inputs.shape), gen, inputs.device)
        schedule = torch.linspace(steps - 1, 0, self.sample_steps).round().long().tolist()
        x0 = x
        for i, t in enumerate(schedule):
            ab = self.alpha_bar[t]
            ab_next = self.alpha_bar[schedule[i + 1]] if i + 1 < len(schedule) else ab.new_ones(())
            eps = self.noise(x, inputs, torch.full((n,), t, device=x.device)).float()
            x0 = ((x - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-1, 1)
            eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()  # the noise consistent with clipped x0
            x = ab_next.sqrt() * x0 + (1 - ab_next).sqrt() * eps
        return (x0 + 1) / 2
