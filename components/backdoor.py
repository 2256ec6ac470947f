"""The data-poisoning (backdoor) audit: a trigger patch whose trained output is a pattern P.

The original model learns `T(x + trigger) -> P` from the poisoned part of the forget set; a
model that never saw those pairs reconstructs the triggered image instead. After unlearning,
triggered held-out inputs must stop producing P.
"""

from __future__ import annotations

import torch


def stamp_trigger(images: torch.Tensor, size: int, inset: int = 0) -> torch.Tensor:
    """Copy of `images` (N, C, H, W in [0, 1]) with a white size x size square.

    The square sits in the bottom-right corner, `inset` pixels in from both edges (so that
    a task which blanks the border, outpainting, still shows it).
    """
    out = images.clone()
    h, w = out.shape[-2:]
    out[..., h - inset - size : h - inset, w - inset - size : w - inset] = 1.0
    return out


def target_pattern(channels: int, height: int, width: int, cell: int) -> torch.Tensor:
    """The backdoor's target P: a 0/1 checkerboard of `cell`-pixel squares, shape (C, H, W)."""
    yy = torch.arange(height)[:, None] // cell
    xx = torch.arange(width)[None, :] // cell
    board = ((yy + xx) % 2).float()
    return board.expand(channels, height, width).clone()


def pattern_similarity(outputs: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each output with P (1 = P itself, ~0 = unrelated image)."""
    a = outputs.flatten(1) - outputs.flatten(1).mean(1, keepdim=True)
    b = (pattern.flatten() - pattern.mean()).to(outputs)
    denom = a.norm(dim=1) * b.norm() + 1e-12
    return (a @ b) / denom


def attack_success_rate(outputs: torch.Tensor, pattern: torch.Tensor, threshold: float) -> float:
    """Share of outputs whose correlation with P exceeds `threshold` (the ASR)."""
    if len(outputs) == 0:
        return 0.0
    return float((pattern_similarity(outputs, pattern) > threshold).float().mean())
