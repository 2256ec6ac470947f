"""The default model: a small convolutional autoencoder (encoder -> latent vector -> decoder).

Two stride-2 convolutions, a linear bottleneck and two transposed convolutions: about 216k
parameters at 28x28. Its FLOPs sit mostly in the linear layers, so an epoch of Fashion-MNIST
takes ~13 s on 2 CPU cores (a wider all-conv AE of half the parameters took 70 s).
"""

from __future__ import annotations

import torch
from torch import nn

from components.models.base import Draws, I2IModel, sample_losses


class ConvAutoencoder(I2IModel):
    """f = decoder(encoder(x)); the two halves are the parameter groups methods act on.

    Args:
        channels: image channels.
        image_size: image side (divisible by 4).
        widths: channels of the two conv stages.
        latent_dim: size of the bottleneck vector.
    """

    family = "ae"

    def __init__(self, channels: int, image_size: int, widths: list[int], latent_dim: int):
        super().__init__()
        if image_size % 4:
            raise ValueError(f"the AE needs an image side divisible by 4, not {image_size}")
        q = image_size // 4
        w0, w1 = widths
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, w0, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(w0, w1, 3, 2, 1), nn.ReLU(),
            nn.Flatten(), nn.Linear(w1 * q * q, latent_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, w1 * q * q), nn.ReLU(), nn.Unflatten(1, (w1, q, q)),
            nn.ConvTranspose2d(w1, w0, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(w0, channels, 4, 2, 1), nn.Sigmoid(),
        )  # fmt: skip

    def generate(self, inputs: torch.Tensor, gen: Draws) -> torch.Tensor:
        return self.decoder(self.encoder(inputs))

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor,
             gen: Draws) -> torch.Tensor:
        return sample_losses(self.generate(inputs, gen), targets)

    def distill(self, inputs: torch.Tensor, targets: torch.Tensor, teacher: I2IModel,
                gen: Draws) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.generate(inputs, gen)
        with torch.no_grad():
            reference = teacher.generate(inputs, gen)
        return sample_losses(out, targets), sample_losses(out, reference)

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.encoder(inputs)
