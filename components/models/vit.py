"""Transformer parts shared by `mae` and `vqtoken`: an encoder over the positions the model
sees and a light decoder that predicts every position (He et al. 2022, MAE; Li et al. 2023,
MAGE). A position is a pixel patch (mae) or a token (vqtoken)."""

from __future__ import annotations

import torch
from torch import nn

from components.models.base import Draws, draw_uniform


def check_patch(family: str, patch: int, side: int) -> None:
    """Refuse a patch size that does not tile the image, naming the ones that would."""
    if side % patch:
        divisors = [d for d in range(1, side + 1) if side % d == 0]
        raise ValueError(f"model.{family}.patch_size {patch} does not divide the image side "
                         f"{side} (divisors: {', '.join(map(str, divisors))})")


def hidden_positions(visible: torch.Tensor, patch: int) -> torch.Tensor:
    """(L,) bool, row-major over the patch grid: True where the task hides any pixel of the
    patch (a patch half inside the inpainting box is hidden, so hidden pixels never reach
    the encoder)."""
    h, w = visible.shape
    grid = visible.reshape(h // patch, patch, w // patch, patch).amin((1, 3))
    return (grid < 1).flatten()


def seen_positions(hidden: torch.Tensor, free: int, n: int, drop: float,
                   gen: Draws, device: torch.device) -> torch.Tensor:
    """Positions the encoder sees, (n, k): every position the task leaves visible, less a
    random `drop` share of them per sample (at least one kept; none when the task hides all).

    `free` is the count of visible positions, a Python int fixed when the model is built:
    counting `hidden` here would make k depend on a tensor's value, which torch.export
    (MLflow 3's format for the registered model) cannot trace.
    """
    keep = max(1, round(free * (1 - drop))) if free else 0
    scores = hidden.float().expand(n, -1) * 2  # hidden positions sort last
    if drop > 0:
        scores = scores + draw_uniform(tuple(scores.shape), gen, device)
    return torch.argsort(scores, dim=1, stable=True)[:, :keep]


def gather(seq: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """seq[n, ids[n, j], ...] for a (N, L, ...) sequence and (N, k) indices."""
    index = ids.view(*ids.shape, *([1] * (seq.dim() - 2))).expand(*ids.shape, *seq.shape[2:])
    return torch.gather(seq, 1, index)


def blocks(dim: int, depth: int, heads: int) -> nn.Sequential:
    """Pre-norm transformer blocks, MLP twice the width, no dropout (tiny data, few epochs)."""
    return nn.Sequential(*[
        nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, activation="gelu",
                                   batch_first=True, norm_first=True)
        for _ in range(depth)])


class ViTEncoder(nn.Module):
    """Embeds the seen positions, adds their position embeddings, prepends a class token (so
    that a task hiding everything still leaves one token) and runs the blocks.

    Args:
        embed: maps gathered positions (patch vectors or token ids) to `dim`.
        length: positions per image.
        dim, depth, heads: the transformer's size.
    """

    def __init__(self, embed: nn.Module, length: int, dim: int, depth: int, heads: int):
        super().__init__()
        self.embed = embed
        self.pos = nn.Parameter(torch.zeros(1, length, dim))
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = blocks(dim, depth, heads)
        self.norm = nn.LayerNorm(dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise the raw parameters (submodules reset their own; `retrain` calls this)."""
        nn.init.trunc_normal_(self.pos, std=0.02)
        nn.init.trunc_normal_(self.cls, std=0.02)

    def forward(self, seq: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """(N, L, ...) sequence and (N, k) seen ids -> (N, 1 + k, dim)."""
        n = seq.shape[0]
        x = self.embed(gather(seq, ids)) + gather(self.pos.expand(n, -1, -1), ids)
        return self.norm(self.blocks(torch.cat([self.cls.expand(n, -1, -1).to(x.dtype), x], 1)))


class ViTDecoder(nn.Module):
    """Puts the encoded positions back in place, a learned mask token everywhere else, and
    predicts `out_dim` values for every position.

    Args:
        dim: the encoder's width.
        decoder_dim, depth, heads: the decoder's size.
        length: positions per image.
        out_dim: values per position (patch pixels or codebook logits).
    """

    def __init__(self, dim: int, decoder_dim: int, length: int, out_dim: int, depth: int,
                 heads: int):
        super().__init__()
        self.proj = nn.Linear(dim, decoder_dim)
        self.mask = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.pos = nn.Parameter(torch.zeros(1, length + 1, decoder_dim))
        self.blocks = blocks(decoder_dim, depth, heads)
        self.norm = nn.LayerNorm(decoder_dim)
        self.head = nn.Linear(decoder_dim, out_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise the raw parameters (submodules reset their own; `retrain` calls this)."""
        nn.init.trunc_normal_(self.pos, std=0.02)
        nn.init.trunc_normal_(self.mask, std=0.02)

    def forward(self, latent: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """(N, 1 + k, dim) encoder output and its (N, k) ids -> (N, L, out_dim)."""
        x = self.proj(latent)
        n, length, width = x.shape[0], self.pos.shape[1] - 1, x.shape[-1]
        full = self.mask.to(x.dtype).expand(n, length, -1)
        full = full.scatter(1, ids[..., None].expand(-1, -1, width), x[:, 1:])
        x = torch.cat([x[:, :1], full], 1) + self.pos
        return self.head(self.norm(self.blocks(x)))[:, 1:]
