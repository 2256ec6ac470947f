"""`mae`: a small ViT masked autoencoder (He et al. 2022) as an image-to-image model.

The encoder sees only the patches the task leaves visible (a patch touching the inpainting
box or the outpainting border is hidden), minus a random `mask_ratio` share of them in
training; the light decoder predicts every patch. The output is the prediction everywhere,
visible patches included, and the loss is the MSE over all pixels: a pair's target may
differ from its input (a poisoned pair's target is the backdoor pattern), and with visible
pixels pasted back the reconstruction task would be the identity. Hidden pixels never reach
the output (tests/model/test_families.py checks it).

Parameter groups: `encoder` = patch embedding, class token, position embeddings and the
encoder blocks; `decoder` = the rest.
"""

from __future__ import annotations

import torch
from torch import nn

from components.models.base import Draws, I2IModel, sample_losses
from components.models.vit import (
    ViTDecoder,
    ViTEncoder,
    check_patch,
    hidden_positions,
    seen_positions,
)
from components.params import MAEParams


class MaskedAutoencoder(I2IModel):
    """Args:
        channels: image channels.
        image_size: image side (a multiple of cfg.patch_size).
        cfg: the `model.mae` block.
        visible: (H, W) task mask, 1 where the model may see the input.
    """

    family = "mae"

    def __init__(self, channels: int, image_size: int, cfg: MAEParams, visible: torch.Tensor):
        super().__init__()
        check_patch("mae", cfg.patch_size, image_size)
        self.patch, self.channels = cfg.patch_size, channels
        self.grid = image_size // cfg.patch_size
        length, patch_dim = self.grid**2, channels * cfg.patch_size**2
        self.mask_ratio = cfg.mask_ratio
        self.encoder = ViTEncoder(nn.Linear(patch_dim, cfg.dim), length, cfg.dim, cfg.depth,
                                  cfg.heads)
        self.decoder = ViTDecoder(cfg.dim, cfg.decoder_dim, length, patch_dim,
                                  cfg.decoder_depth, cfg.heads)
        self.register_buffer("hidden", hidden_positions(visible, cfg.patch_size),
                             persistent=False)
        self.free = int((~self.hidden).sum())  # visible positions

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, L, C·p·p), patches in row-major order."""
        n, c, g, p = images.shape[0], self.channels, self.grid, self.patch
        return images.reshape(n, c, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(n, g * g, -1)

    def unpatchify(self, seq: torch.Tensor) -> torch.Tensor:
        """(N, L, C·p·p) -> (N, C, H, W)."""
        n, c, g, p = seq.shape[0], self.channels, self.grid, self.patch
        return seq.reshape(n, g, g, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(n, c, g * p, g * p)

    def seen(self, n: int, gen: Draws, device: torch.device) -> torch.Tensor:
        """The patches the encoder sees: the task's visible ones, less random ones in training."""
        drop = self.mask_ratio if self.training else 0.0
        return seen_positions(self.hidden, self.free, n, drop, gen, device)

    def reconstruct(self, inputs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        latent = self.encoder(self.patchify(inputs), ids)
        return torch.sigmoid(self.unpatchify(self.decoder(latent, ids)))

    def generate(self, inputs: torch.Tensor, gen: Draws) -> torch.Tensor:
        ids = seen_positions(self.hidden, self.free, inputs.shape[0], 0.0, gen, inputs.device)
        return self.reconstruct(inputs, ids)

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor,
             gen: Draws) -> torch.Tensor:
        ids = self.seen(inputs.shape[0], gen, inputs.device)
        return sample_losses(self.reconstruct(inputs, ids), targets)

    def distill(self, inputs: torch.Tensor, targets: torch.Tensor, teacher: I2IModel,
                gen: Draws) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self.seen(inputs.shape[0], gen, inputs.device)  # the teacher sees the same patches
        out = self.reconstruct(inputs, ids)
        with torch.no_grad():
            reference = teacher.reconstruct(inputs, ids)
        return sample_losses(out, targets), sample_losses(out, reference)

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        """The encoder's tokens for the task-visible patches (class token first)."""
        ids = seen_positions(self.hidden, self.free, inputs.shape[0], 0.0, None, inputs.device)
        return self.encoder(self.patchify(inputs), ids)
