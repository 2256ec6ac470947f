"""What every model family offers the loops, methods, audits and metrics.

Each family's module is an `I2IModel`: besides `.encoder` and `.decoder` (the parameter
groups methods act on) it computes, per (input, target) pair, its own training objective,
and it generates images. Every objective goes through the model's `forward` (an `op`
argument picks it) because DistributedDataParallel synchronises gradients only for what
enters through its wrapper's forward: calling a method of the wrapped module directly
would train each worker on its own.

| family    | loss_per_sample                         | generate                          |
|-----------|-----------------------------------------|-----------------------------------|
| ae        | MSE of the output                       | the output                        |
| mae       | MSE of the output (patches the task     | the output from the patches the   |
|           | hides, plus random ones in training)    | task leaves visible               |
| vqtoken   | token cross-entropy at every position   | visible tokens -> predicted       |
|           | (task-hidden and random tokens masked)  | tokens -> tokenizer decoder       |
| diffusion | noise-prediction MSE at random steps    | a short DDIM sampler              |

Randomness (masks, timesteps, noise): a `generator` when given; in training mode the
global RNG (seeded per worker); in eval mode a fixed seed, so that audits, thresholds and
metrics are repeatable and the same pair is scored alike for every model.
"""

from __future__ import annotations

import torch
from torch import nn

EVAL_SEED = 0  # seed of the masks, timesteps and noise of eval-mode losses and sampling


class I2IModel(nn.Module):
    """Base of the families: `forward(inputs, targets, op=..., ...)` dispatches to the
    methods below; `op="generate"` (the default) keeps `model(x)` an image-to-image map."""

    family = ""  # the `model.family` value
    embeds = True  # whether `embed` has a meaningful encoder embedding of the input
    no_embedding = ""  # why not, when embeds is False

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor | None = None, *,
                op: str = "generate", generator: torch.Generator | None = None,
                teacher: nn.Module | None = None) -> torch.Tensor | tuple:
        gen = self.rng(generator)
        if op == "generate":
            return self.generate(inputs, gen)
        if op == "loss":
            return self.loss(inputs, targets, gen)
        if op == "train":
            return self.train_loss(inputs, targets, gen)
        if op == "distill":
            return self.distill(inputs, targets, unwrap(teacher), gen)
        raise ValueError(f"unknown model op {op!r} (generate, loss, train or distill)")

    def rng(self, generator: torch.Generator | None) -> torch.Generator | None:
        """The generator to draw from: the given one, the global RNG in training, else a
        fixed-seed one."""
        if generator is not None or self.training:
            return generator
        return torch.Generator().manual_seed(EVAL_SEED)

    def generate(self, inputs: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor,
             gen: torch.Generator | None) -> torch.Tensor:
        raise NotImplementedError

    def train_loss(self, inputs: torch.Tensor, targets: torch.Tensor,
                   gen: torch.Generator | None) -> torch.Tensor:
        """The from-scratch training objective; families with an auxiliary part (the VQ
        tokenizer) add it here, so that unlearning objectives never move it."""
        return self.loss(inputs, targets, gen)

    def distill(self, inputs: torch.Tensor, targets: torch.Tensor, teacher: I2IModel,
                gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


def sample_losses(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error over all pixels (the I2I loss), in float32: outputs of
    a mixed-precision forward come in half precision."""
    return (outputs.float() - targets.float()).pow(2).flatten(1).mean(1)


def draw_normal(shape: tuple[int, ...], gen: torch.Generator | None,
                device: torch.device) -> torch.Tensor:
    """N(0, 1) noise: from `gen` on the CPU (the same numbers on every device), or from the
    device's global RNG when gen is None."""
    if gen is None:
        return torch.randn(shape, device=device)
    return torch.randn(shape, generator=gen).to(device)


def draw_uniform(shape: tuple[int, ...], gen: torch.Generator | None,
                 device: torch.device) -> torch.Tensor:
    """U[0, 1) draws, like draw_normal."""
    if gen is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=gen).to(device)


def loss_per_sample(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """The family's objective on each (input, target) pair, through the (wrapped) model.

    Args:
        model: a family's model, possibly DDP-wrapped.
        inputs, targets: a batch of pairs on the model's device.
        generator: source of masks / timesteps / noise (see the module docstring).

    Returns:
        Per-pair losses, shape (N,).
    """
    return model(inputs, targets, op="loss", generator=generator)


def train_loss_per_sample(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """The from-scratch training objective per pair (loss_per_sample plus any auxiliary
    part, such as the VQ tokenizer's reconstruction). Returns shape (N,)."""
    return model(inputs, targets, op="train", generator=generator)


def distill_per_sample(model: nn.Module, teacher: nn.Module, inputs: torch.Tensor,
                       targets: torch.Tensor, generator: torch.Generator | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """The objective and the distance to a frozen teacher, from one forward of the model.

    The distance compares the family's raw predictions under the same masks, timesteps and
    noise: output pixels (ae, mae), token distributions by KL(teacher || model) (vqtoken),
    predicted noise (diffusion).

    Returns:
        (loss per pair, distance to the teacher per pair), each of shape (N,).
    """
    return model(inputs, targets, op="distill", generator=generator, teacher=teacher)


def generate(model: nn.Module, inputs: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """The family's images for `inputs` (same shape, values in [0, 1])."""
    return model(inputs, op="generate", generator=generator)


def embed(model: nn.Module, inputs: torch.Tensor, method: str) -> torch.Tensor:
    """The encoder embedding of `inputs`, flattened per sample (N, D), for the methods
    defined on it.

    It bypasses a DDP wrapper (the decoder takes no part, which DDP's default would refuse),
    so such methods average their gradients themselves (methods.loop.average_gradients).

    Raises:
        ValueError: the family has no meaningful encoder embedding; names method and family.
    """
    core = unwrap(model)
    if not core.embeds:
        raise ValueError(
            f"unlearn.method {method!r} needs an encoder embedding of the input, and "
            f"model.family {core.family!r} has none: {core.no_embedding}")
    return core.embed(inputs).flatten(1)
