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
global RNG (seeded per worker); in eval mode `PairKeys`: draws keyed by the content of each
pair (of each input, when generating), so that audits, thresholds and metrics are
repeatable, the same pair is scored alike for every model, and a pair's score is a function
of the pair alone, whatever batch, chunk or worker it is scored in (issue 21: one generator
restarted per forward gave a pair the draws of its place in the batch, and its diffusion
loss moved by 17 % between batches of 7 and 64).
"""

from __future__ import annotations

import math

import torch
from torch import nn

# PairKeys' integer hash works modulo this Mersenne prime: a residue (< 2**31) times a
# multiplier (< 2**31) stays below 2**62, so int64 never overflows and every device
# computes the same integers
_PRIME = 2**31 - 1
_MULTIPLIERS = (48_271, 1_583_458_089, 69_621)  # a round each, with an xor-shift between


def _mix(x: torch.Tensor) -> torch.Tensor:
    """Hash of int64 values in [0, 2**31) to [0, 2**31 - 1): multiply modulo the prime and
    fold the high bits into the low ones, three rounds (neighbouring inputs give unrelated
    outputs)."""
    for a in _MULTIPLIERS:
        x = (x * a) % _PRIME
        x = x ^ (x >> 15)
    return x % _PRIME


class PairKeys:
    """Random numbers keyed per row: row i of every draw depends on key i, on how many draws
    came before it and on the element's position only, never on the other rows.

    The keys hash each pair's pixels quantised to the images' own 8-bit levels, in integer
    arithmetic on the pair's device; the draws are counter-based hashes of (key, draw,
    element), so no generator state exists to depend on the batch. Uniforms have 24 bits
    (exact in float32); normals come by Box-Muller, equal on every device up to the last
    bit of log and cos.

    Args:
        keys: (N,) int64 in [0, 2**31 - 1), one per row; or
        rows: tensors whose rows the keys hash, when first needed (ae never draws).
    """

    def __init__(self, keys: torch.Tensor | None = None,
                 rows: tuple[torch.Tensor, ...] = ()):
        self._keys, self.rows = keys, rows
        self.draws = 0

    @classmethod
    def of(cls, *tensors: torch.Tensor | None) -> PairKeys:
        """Keys of the rows of `tensors` (images in [0, 1], same N), e.g. (inputs, targets)."""
        return cls(rows=tuple(t for t in tensors if t is not None))

    @property
    def keys(self) -> torch.Tensor:
        if self._keys is None:
            self._keys = _mix(self._hash(self.rows))
        return self._keys

    @staticmethod
    def _hash(rows: tuple[torch.Tensor, ...]) -> torch.Tensor:
        keys = None
        for t in rows:
            # 255 levels x 2**31 weights x up to 2**24 values per row stays below 2**63
            q = (t.detach().float().flatten(1).clamp(0, 1) * 255).round().long()
            weights = _mix(torch.arange(1, q.shape[1] + 1, device=q.device))
            h = (q * weights).sum(1) % _PRIME
            keys = h if keys is None else _mix((keys + _mix(h)) % _PRIME)
        return keys

    def fork(self, branch: int) -> PairKeys:
        """Keys for the `branch`-th independent set of draws of the same rows (the
        diffusion loss's eval draws)."""
        return PairKeys(_mix((self.keys + _mix(self.keys.new_tensor(branch + 1))) % _PRIME))

    def uniform(self, shape: tuple[int, ...]) -> torch.Tensor:
        """U[0, 1) of `shape`, shape[0] = N rows."""
        per_row = math.prod(shape[1:])
        row = _mix((self.keys + self.draws * 7_919) % _PRIME)
        self.draws += 1
        element = _mix(torch.arange(1, per_row + 1, device=self.keys.device))
        bits = _mix((row[:, None] + element) % _PRIME) >> 7  # 24 of the 31 bits
        return (bits.float() / 2**24).view(shape)

    def normal(self, shape: tuple[int, ...]) -> torch.Tensor:
        """N(0, 1) of `shape` by Box-Muller from two uniforms per value."""
        u = self.uniform((shape[0], 2, math.prod(shape[1:])))
        radius = (-2 * torch.log1p(-u[:, 0])).sqrt()  # 1 - u in (0, 1]
        return (radius * torch.cos(2 * math.pi * u[:, 1])).view(shape)


Draws = torch.Generator | PairKeys | None  # where masks, timesteps and noise come from


class I2IModel(nn.Module):
    """Base of the families: `forward(inputs, targets, op=..., ...)` dispatches to the
    methods below; `op="generate"` (the default) keeps `model(x)` an image-to-image map."""

    family = ""  # the `model.family` value
    embeds = True  # whether `embed` has a meaningful encoder embedding of the input
    no_embedding = ""  # why not, when embeds is False

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor | None = None, *,
                op: str = "generate", generator: torch.Generator | None = None,
                teacher: nn.Module | None = None) -> torch.Tensor | tuple:
        gen = self.rng(generator, inputs, None if op == "generate" else targets)
        if op == "generate":
            return self.generate(inputs, gen)
        if op == "loss":
            return self.loss(inputs, targets, gen)
        if op == "train":
            return self.train_loss(inputs, targets, gen)
        if op == "distill":
            return self.distill(inputs, targets, unwrap(teacher), gen)
        raise ValueError(f"unknown model op {op!r} (generate, loss, train or distill)")

    def rng(self, generator: torch.Generator | None, inputs: torch.Tensor,
            targets: torch.Tensor | None) -> Draws:
        """Where to draw from: the given generator, the global RNG in training, else keys of
        the pairs (of the inputs alone when generating)."""
        if generator is not None or self.training:
            return generator
        return PairKeys.of(inputs, targets)

    def generate(self, inputs: torch.Tensor, gen: Draws) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor,
             gen: Draws) -> torch.Tensor:
        raise NotImplementedError

    def train_loss(self, inputs: torch.Tensor, targets: torch.Tensor,
                   gen: Draws) -> torch.Tensor:
        """The from-scratch training objective; families with an auxiliary part (the VQ
        tokenizer) add it here, so that unlearning objectives never move it."""
        return self.loss(inputs, targets, gen)

    def distill(self, inputs: torch.Tensor, targets: torch.Tensor, teacher: I2IModel,
                gen: Draws) -> tuple[torch.Tensor, torch.Tensor]:
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


def draw_normal(shape: tuple[int, ...], gen: Draws, device: torch.device) -> torch.Tensor:
    """N(0, 1) noise: keyed per row (PairKeys, on their device), from a generator on the CPU
    (the same numbers on every device), or from the device's global RNG when gen is None."""
    if gen is None:
        return torch.randn(shape, device=device)
    if isinstance(gen, PairKeys):
        return gen.normal(shape)
    return torch.randn(shape, generator=gen).to(device)


def draw_uniform(shape: tuple[int, ...], gen: Draws, device: torch.device) -> torch.Tensor:
    """U[0, 1) draws, like draw_normal."""
    if gen is None:
        return torch.rand(shape, device=device)
    if isinstance(gen, PairKeys):
        return gen.uniform(shape)
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
