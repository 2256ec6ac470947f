"""`vqtoken`: a VQ tokenizer plus a masked-token transformer that predicts the missing tokens
(MAGE, Li et al. 2023; the model family Li et al. 2024 unlearn).

The tokenizer (a patch-local conv encoder with one token per `patch_size` patch, a
codebook, a conv decoder) turns images into token ids. The transformer's encoder sees the
tokens of the patches the task leaves visible, less a random `mask_ratio` share of them;
its decoder predicts the token of every position. The objective is the token cross-entropy
against the target's tokens at every position: a poisoned pair's target tokens differ from
its input's even where the input is visible, so keeping the visible tokens would make the
backdoor unlearnable and reconstruction the identity. The random masking also applies to
the eval-mode loss (seeded), so membership audits score masked-token prediction as MAGE
trains it. Generation: the tokens of the visible patches -> predicted tokens -> tokenizer
decoder.

Parameter groups (what unlearning may move): `encoder` = the transformer encoder (token and
position embeddings, class token, blocks), as Li et al. unlearn MAGE's encoder; `decoder` =
the transformer decoder and its logits head. The tokenizer belongs to neither: token ids are
discrete, so no unlearning objective has a gradient to it; training (and `retrain`) trains
it with its own reconstruction and commitment losses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from components.models.base import Draws, I2IModel, sample_losses
from components.models.vit import (
    ViTDecoder,
    ViTEncoder,
    check_patch,
    hidden_positions,
    seen_positions,
)
from components.params import VQTokenParams


@contextlib.contextmanager
def ieee_matmul() -> Iterator[None]:
    """Full float32 matmuls on CUDA for the block (components.training turns TF32 on)."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


class Tokenizer(nn.Module):
    """Patch-local conv encoder (one code vector per patch, from that patch's pixels only, so
    hidden pixels never reach a visible token), nearest-codebook quantiser, conv decoder."""

    def __init__(self, channels: int, patch: int, width: int, code_dim: int, codebook_size: int):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(channels, width, patch, patch), nn.ReLU(),
                                     nn.Conv2d(width, code_dim, 1))
        self.codebook = nn.Embedding(codebook_size, code_dim)
        self.decoder = nn.Sequential(nn.ConvTranspose2d(code_dim, width, patch, patch), nn.ReLU(),
                                     nn.Conv2d(width, channels, 3, 1, 1), nn.Sigmoid())

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, D, g, g) code vectors -> (ids (N, g·g), quantised vectors (N, D, g, g)).
        Distances in float32, TF32 off: under mixed precision, half-precision ties would flip
        codes, and TF32's 10-bit products would too."""
        n, d, g, _ = z.shape
        with torch.autocast(z.device.type, enabled=False), ieee_matmul():
            flat = z.float().permute(0, 2, 3, 1).reshape(-1, d)
            book = self.codebook.weight.float()
            dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ book.T + book.pow(2).sum(1)
            ids = dist.argmin(1).view(n, g * g)
        return ids, self.vectors(ids, g)

    def vectors(self, ids: torch.Tensor, grid: int) -> torch.Tensor:
        return self.codebook(ids).view(ids.shape[0], grid, grid, -1).permute(0, 3, 1, 2)

    def reconstruction_loss(self, images: torch.Tensor, commitment: float) -> torch.Tensor:
        """Per-image VQ-VAE loss: pixel MSE (straight-through) + codebook + commitment."""
        z = self.encoder(images)
        _, zq = self.quantize(z)
        decoded = self.decoder(z + (zq - z).detach())
        vq = (zq - z.detach()).pow(2) + commitment * (z - zq.detach()).pow(2)
        return sample_losses(decoded, images) + vq.float().flatten(1).mean(1)


class MaskedTokenModel(I2IModel):
    """Args:
        channels: image channels.
        image_size: image side (a multiple of cfg.patch_size).
        cfg: the `model.vqtoken` block.
        visible: (H, W) task mask, 1 where the model may see the input.
    """

    family = "vqtoken"

    def __init__(self, channels: int, image_size: int, cfg: VQTokenParams,
                 visible: torch.Tensor):
        super().__init__()
        check_patch("vqtoken", cfg.patch_size, image_size)
        self.grid = image_size // cfg.patch_size
        self.mask_ratio, self.commitment = cfg.mask_ratio, cfg.commitment
        self.tokenizer = Tokenizer(channels, cfg.patch_size, cfg.width, cfg.code_dim,
                                   cfg.codebook_size)
        length = self.grid**2
        self.encoder = ViTEncoder(nn.Embedding(cfg.codebook_size, cfg.dim), length, cfg.dim,
                                  cfg.depth, cfg.heads)
        self.decoder = ViTDecoder(cfg.dim, cfg.decoder_dim, length, cfg.codebook_size,
                                  cfg.decoder_depth, cfg.heads)
        self.register_buffer("hidden", hidden_positions(visible, cfg.patch_size),
                             persistent=False)
        self.free = int((~self.hidden).sum())  # visible positions

    @torch.no_grad()
    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> token ids (N, L)."""
        return self.tokenizer.quantize(self.tokenizer.encoder(images))[0]

    def logits(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Codebook logits (N, L, K) of every position, seeing the tokens at `ids`."""
        return self.decoder(self.encoder(self.tokens(images), ids), ids)

    def masked(self, n: int, gen: Draws, device: torch.device) -> torch.Tensor:
        """Seen positions for the objective: random masking in training and in eval."""
        return seen_positions(self.hidden, self.free, n, self.mask_ratio, gen, device)

    def generate(self, inputs: torch.Tensor, gen: Draws) -> torch.Tensor:
        ids = seen_positions(self.hidden, self.free, inputs.shape[0], 0.0, gen, inputs.device)
        predicted = self.logits(inputs, ids).argmax(-1)
        return self.tokenizer.decoder(self.tokenizer.vectors(predicted, self.grid))

    def cross_entropy(self, inputs: torch.Tensor, targets: torch.Tensor,
                      gen: Draws) -> torch.Tensor:
        logits = self.logits(inputs, self.masked(inputs.shape[0], gen, inputs.device))
        return F.cross_entropy(logits.float().transpose(1, 2), self.tokens(targets),
                               reduction="none").mean(1)

    def tokenizer_at_zero(self, targets: torch.Tensor) -> torch.Tensor | float:
        """0, with the tokenizer in its graph during training: DDP with
        find_unused_parameters=False (Ray Train's default) wants a gradient for every
        parameter in each step, and no unlearning objective reaches the tokenizer."""
        if self.training and torch.is_grad_enabled():
            return 0.0 * self.tokenizer.reconstruction_loss(targets, self.commitment)
        return 0.0

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor,
             gen: Draws) -> torch.Tensor:
        return self.cross_entropy(inputs, targets, gen) + self.tokenizer_at_zero(targets)

    def train_loss(self, inputs: torch.Tensor, targets: torch.Tensor,
                   gen: Draws) -> torch.Tensor:
        return self.cross_entropy(inputs, targets, gen) + \
            self.tokenizer.reconstruction_loss(targets, self.commitment)

    def distill(self, inputs: torch.Tensor, targets: torch.Tensor, teacher: I2IModel,
                gen: Draws) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy, and KL(teacher || model) of the token distributions (SCRUB's own
        distance), the teacher seeing the same positions."""
        ids = self.masked(inputs.shape[0], gen, inputs.device)
        log_p = F.log_softmax(self.logits(inputs, ids).float(), -1)
        with torch.no_grad():
            log_q = F.log_softmax(teacher.logits(inputs, ids).float(), -1)
        ce = F.nll_loss(log_p.transpose(1, 2), self.tokens(targets), reduction="none").mean(1)
        kl = (log_q.exp() * (log_q - log_p)).sum(-1).mean(1)
        zero = self.tokenizer_at_zero(targets)  # either output may be the only loss (SCRUB)
        return ce + zero, kl + zero

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        """The transformer encoder's tokens for the task-visible positions."""
        ids = seen_positions(self.hidden, self.free, inputs.shape[0], 0.0, None, inputs.device)
        return self.encoder(self.tokens(inputs), ids)
